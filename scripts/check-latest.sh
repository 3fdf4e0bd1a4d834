#!/usr/bin/env bash
# Drift check, not a gate: build ./.venv-latest with the newest versions pyproject.toml
# allows (no locks), run the default test tier there and name what breaks, so a new
# upstream release is met in a lock refresh (scripts/lock.sh) before users meet it.
#   bash scripts/check-latest.sh [pytest arguments]
# Exit status: pytest's. Prints each package whose newest version differs from locks/main.txt.
set -uo pipefail
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
[ $status -eq 0 ] && echo "check-latest: the default tier passes with the newest versions" \
  || echo "check-latest: the default tier fails with the newest versions (failures above): fix, then bash scripts/lock.sh"
exit $status
