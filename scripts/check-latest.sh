#!/usr/bin/env bash
# Drift check, not a gate: build ./.venv-latest with the newest versions pyproject.toml
# allows (no locks), run the default test tier there and name what breaks, so a new
# upstream release is met in a lock refresh (scripts/lock.sh) before users meet it.
#   bash scripts/check-latest.sh [pytest arguments]
# Exit status: pytest's. Prints each package whose newest version differs from locks/main.txt,
# and ends with one line saying what ran (the default tier, or what the arguments chose).
set -uo pipefail

# verdict STATUS [pytest arguments]: the last line, from pytest's exit status. It speaks of
# the default tier only when no arguments narrowed what ran.
verdict() {
  local status=$1 what note=""
  shift
  if [ $# -eq 0 ]; then what="the default tier"
  elif [ "$*" = "--full" ]; then what="the full tier"
  else what="pytest $*"; note=" (only what these arguments select, not the whole default tier)"; fi
  case $status in
    0) echo "check-latest: $what passes with the newest versions$note" ;;
    5) echo "check-latest: $what collected no tests: nothing was checked" ;;
    *) echo "check-latest: $what fails with the newest versions$note: fix the failures above, then bash scripts/lock.sh" ;;
  esac
}

cd "$(dirname "$0")/.."
rm -rf .venv-latest
LOCKED=0 VENV=.venv-latest bash scripts/setup.sh || { echo "check-latest: the unlocked set-up failed (above)"; exit 1; }

echo "check-latest: versions that differ from locks/main.txt (locked -> newest):"
.venv-latest/bin/python - <<'PY'
import re
from importlib.metadata import distributions
from packaging.utils import canonicalize_name as name

locked = dict((name(m[1]), m[2]) for m in re.finditer(r"^(([A-Za-z0-9._-]+)==(\S+))", open("locks/main.txt").read(), re.M))
newest = {name(d.metadata["Name"]): d.version for d in distributions()}
changed = [f"  {n} {locked[n]} -> {newest[n]}" for n in sorted(locked) if n in newest and newest[n] != locked[n]]
print("\n".join(changed) or "  none")
PY
HF_HUB_OFFLINE=1 .venv-latest/bin/python -m pytest -q -rf "$@"
status=$?
verdict $status "$@"
exit $status
