#!/usr/bin/env bash
# The runs of bench/reference/search-race-wall-protocol-2026-12-07.txt, each after the load settles.
set -euo pipefail
cd "$(dirname "$0")/.."
for seed in 4 5 6; do
  for prompts in 128 512; do
    for _ in $(seq 60); do
      awk '{exit !($1 < 0.5)}' /proc/loadavg && break
      sleep 5
    done
    echo "== seed $seed, $prompts prompts, load average at start: $(cut -d' ' -f1 /proc/loadavg)"
    HF_HUB_OFFLINE=1 .venv/bin/python bench/search_race.py --reward-model-only --rm-prompts "$prompts" \
      --orders 10 --seed "$seed" --work "bench/results/wall-$seed-$prompts"
  done
done
