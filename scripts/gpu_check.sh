#!/usr/bin/env bash
# On a CUDA machine, after scripts/setup.sh with a CUDA build of torch
# (TORCH_SPEC="torch==2.13.0" from the CUDA index), or with PYTHON set to an
# interpreter that has mergekit-expo: merge checks with --cuda, the search engines on
# the GPU (and vLLM's, if installed). See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
HF_HUB_OFFLINE=1 "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py "$@"
