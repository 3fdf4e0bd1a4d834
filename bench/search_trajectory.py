"""Per-α weight update of the α search on a run's checkpoints against the same search on a pair.

One synthetic Llama-shaped SFT model and a run of K checkpoints to its aligned model; two
transformers engines: one on the pair (SFT, last checkpoint: expo), one on the run
(expo_trajectory, the least-squares line through the SFT model and the K checkpoints). Each
sets the same α values in place, interleaved (the same machine state for both); the
trajectory/expo ratio of the seconds per update is taken per α (median, min-max), and of
each engine's fastest update (on a shared machine, the one least disturbed by other load).

Usage: python bench/search_trajectory.py [--hidden 512 --layers 8] [--checkpoints 5] [--repeats 5]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mergekit_expo.search.hf_engine import HFEngine
from mergekit_expo.synthetic import PairSpec, write_checkpoints, write_pair

ALPHAS = (0.3, 0.5, 1.0)


def timed(engine, alpha: float) -> float:
    start = time.perf_counter()
    engine.set_alpha(alpha)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        spec = PairSpec(hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_layers=args.layers,
                        num_heads=max(1, args.hidden // 64), num_kv_heads=max(1, args.hidden // 128))
        sft, aligned = write_pair(str(Path(work) / "pair"), spec)
        steps = [100 * (i + 1) for i in range(args.checkpoints)]
        checkpoints = write_checkpoints(sft, aligned, str(Path(work) / "run"), steps)
        engines = {"expo": HFEngine(sft, checkpoints[-1]), "expo_trajectory": HFEngine(sft, *checkpoints)}
        elements = sum(t.numel() for t in engines["expo"].model.state_dict().values())
        for engine in engines.values():  # untimed: first-use costs (kernel compilation, page cache)
            engine.set_alpha(0.1)
        seconds = {name: [] for name in engines}
        for _ in range(args.repeats):
            for alpha in ALPHAS:
                for name, engine in engines.items():  # interleaved
                    seconds[name].append(timed(engine, alpha))
    print(f"{elements / 1e6:.1f}M weights, a run of {args.checkpoints} checkpoints, "
          f"{args.repeats} x {len(ALPHAS)} updates each (hf engine, CPU)")
    for name, values in seconds.items():
        print(f"{name:16} per update: median {statistics.median(values):.3f} s "
              f"({min(values):.3f}-{max(values):.3f})")
    ratios = [t / e for t, e in zip(seconds["expo_trajectory"], seconds["expo"])]
    print(f"trajectory/expo per update {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}); "
          f"of the fastest updates (least disturbed by other load) "
          f"{min(seconds['expo_trajectory']) / min(seconds['expo']):.2f}x")


if __name__ == "__main__":
    main()
