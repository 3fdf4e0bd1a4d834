#!/usr/bin/env bash
# On a CUDA machine, after scripts/setup.sh with a CUDA build of torch
# (TORCH_SPEC="torch==2.13.0" from the CUDA index): merges a ~1B pair on CPU and
# with --cuda, checks both equal the fp64 result rounded once, prints wall times.
set -euo pipefail
cd "$(dirname "$0")/.."
HF_HUB_OFFLINE=1 .venv/bin/python scripts/gpu_check.py "$@"
