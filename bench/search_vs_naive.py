"""Cost of scoring K α values: `mergekit-expo search` vs the naive loop.

The naive loop merges each α to disk with `mergekit-yaml`, reloads the result with
transformers and scores it; the search sets the weights in place. Same scorer
(preference, 16 pairs), same synthetic pair (default 0.5B, from bench/run.py's cache).
Usage: python bench/search_vs_naive.py [--size 0.5B] [--k 7]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from mergekit_expo.search.hf_engine import HFEngine  # noqa: E402
from mergekit_expo.search.scorers import PreferenceScorer  # noqa: E402
from mergekit_expo.synthetic import BASE_VOCAB, SPECIAL, write_tokenizer  # noqa: E402
from run import pair_for  # noqa: E402

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


def preference_file(path: Path, count: int = 16) -> Path:
    import random

    rng = random.Random(0)
    words = lambda n: " ".join(rng.choice(BASE_VOCAB) for _ in range(n))  # noqa: E731
    path.write_text("".join(json.dumps({"prompt": words(8), "chosen": words(6), "rejected": words(6)}) + "\n"
                            for _ in range(count)))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="0.5B")
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--work", default=str(HERE / "results" / "search"))
    args = parser.parse_args()
    import transformers

    sft, aligned = pair_for(args.size, Path(args.cache))
    for folder in (sft, aligned):
        if not (folder / "tokenizer.json").exists():
            write_tokenizer(str(folder), SPECIAL + BASE_VOCAB, [])
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = preference_file(work / "prefs.jsonl")
    alphas = [round(0.1 * i, 1) for i in range(args.k)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")

    start = time.perf_counter()
    subprocess.run([str(BIN / "mergekit-expo"), "search", str(sft), str(aligned), "--data", str(data),
                    "--alphas", ",".join(map(str, alphas)), "--out", str(work / "search")],
                   env=env, check=True, capture_output=True)
    search_total = time.perf_counter() - start
    rows = json.loads((work / "search" / "results.json").read_text())["results"]
    update = statistics.median(r["update_seconds"] for r in rows)
    scoring = statistics.median(r["seconds"] - r["update_seconds"] for r in rows)

    scorer = PreferenceScorer(str(data))
    naive_merge, naive_reload, naive_score = [], [], []
    start_naive = time.perf_counter()
    for alpha in alphas:
        config = work / "naive.yml"
        config.write_text(yaml.safe_dump({"merge_method": "expo", "base_model": str(sft),
                                          "models": [{"model": str(aligned), "parameters": {"alpha": alpha}}]}))
        out = work / "naive-out"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "mergekit-yaml"), str(config), str(out), "--quiet"], env=env,
                       check=True, capture_output=True)
        t1 = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        t2 = time.perf_counter()
        scorer(HFEngine.for_model(model, tokenizer))
        t3 = time.perf_counter()
        naive_merge.append(t1 - t0)
        naive_reload.append(t2 - t1)
        naive_score.append(t3 - t2)
        del model
    naive_total = time.perf_counter() - start_naive
    naive_update = statistics.median(m + r for m, r in zip(naive_merge, naive_reload))

    print(f"{args.size} pair, K={args.k} alphas, preference scorer on 16 pairs, {os.cpu_count()} cores")
    print(f"{'':34} {'search':>10} {'naive loop':>11} {'ratio':>7}")
    print(f"{'total wall (s)':34} {search_total:10.1f} {naive_total:11.1f} {search_total / naive_total:6.2f}x")
    print(f"{'per-α weights (s, median)':34} {update:10.2f} {naive_update:11.2f} {update / naive_update:6.2f}x"
          "   (in-place update vs merge to disk + reload)")
    print(f"{'per-α scoring (s, median)':34} {scoring:10.2f} {statistics.median(naive_score):11.2f}")


if __name__ == "__main__":
    main()
