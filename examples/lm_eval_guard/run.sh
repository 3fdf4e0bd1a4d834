#!/usr/bin/env bash
# Choose α by preference accuracy, guarded by an lm-eval task, on a tiny generated pair.
# Run: bash examples/lm_eval_guard/run.sh   (the models are random: the numbers mean
# nothing, the mechanics are the point)
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1
# The project's venv (scripts/setup.sh) if there is one, else the active environment.
VENV=${VENV:-../../.venv}
if [ -x "$VENV/bin/mergekit-expo" ]; then BIN="$VENV/bin/"; else BIN=""; fi
if ! "${BIN}python" -c "import mergekit_expo, lm_eval" 2>/dev/null; then
  echo "Error: mergekit-expo with lm-eval is not installed here: run 'bash scripts/setup.sh' in the" \
       "repository (or pip install 'mergekit-expo[lm-eval]' and activate that environment)" >&2
  exit 1
fi
# A tiny SFT/aligned pair whose "alignment update" is large enough to move the scores.
[ -d models ] || "${BIN}python" -c "from mergekit_expo.synthetic import PairSpec, write_pair
write_pair('models', PairSpec(delta_scale=0.5, seed=3))"
"${BIN}mergekit-expo" search ./models/sft ./models/aligned \
    --scorer preference --data dev_prefs.jsonl \
    --guard lm-eval:toy_recall --tasks-path ./tasks --max-drop 0.05 \
    --alphas 0,0.1,0.2,0.3,0.5,1.0,1.5 --out ./search
