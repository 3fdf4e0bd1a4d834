#!/usr/bin/env bash
# Create ./.venv and install mergekit-expo (editable) with the test and extra tools.
# Override for your machine, e.g. a CUDA build of torch:
#   TORCH_SPEC="torch==2.13.0" PYTHON=python3.11 EXTRAS=test bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
pip_install "$TORCH_SPEC"
pip_install -e ".[$EXTRAS]"
echo "mergekit-expo is installed in $(pwd)/.venv"
