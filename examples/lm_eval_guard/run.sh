#!/usr/bin/env bash
# Choose α by preference accuracy, guarded by an lm-eval task, on a tiny generated pair.
# Run: bash examples/lm_eval_guard/run.sh   (the models are random: the numbers mean
# nothing, the mechanics are the point)
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1
# A tiny SFT/aligned pair whose "alignment update" is large enough to move the scores.
[ -d models ] || python -c "from mergekit_expo.synthetic import PairSpec, write_pair
write_pair('models', PairSpec(delta_scale=0.5, seed=3))"
mergekit-expo search ./models/sft ./models/aligned \
    --scorer preference --data dev_prefs.jsonl \
    --guard lm-eval:toy_recall --tasks-path ./tasks --max-drop 0.05 \
    --alphas 0,0.1,0.2,0.3,0.5,1.0,1.5 --out ./search
