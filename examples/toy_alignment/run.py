"""A miniature of the paper's controlled experiment, on a CPU in minutes.

1. SFT a tiny Llama-shaped model on a mediocre demonstrator (TRL SFTTrainer).
2. DPO from that SFT checkpoint on preference pairs (TRL DPOTrainer), saving
   checkpoints at 20%, 40%, ..., 100% of the steps.
3. For each DPO checkpoint, pick α on the dev split with `mergekit-expo search`
   (the programmatic reward as a callable scorer), then merge with `mergekit-yaml`
   and `merge_method: expo` at that α.
4. Score SFT, every DPO checkpoint and every ExPO model on held-out test prompts
   with the programmatic reward, several sampling seeds; mean and 95% interval.

Usage: python examples/toy_alignment/run.py [--out DIR] [--quick]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import task  # noqa: E402

BIN = Path(sys.executable).parent
FULL = dict(sft_rows=6000, sft_epochs=4, dpo_rows=3000, dpo_epochs=2, dpo_lr=5e-4, test_prompts=300,
            seeds=3, alphas="0,0.1,0.2,0.3,0.4,0.5,0.7,1.0")
QUICK = dict(sft_rows=256, sft_epochs=1, dpo_rows=160, dpo_epochs=1, dpo_lr=5e-4, test_prompts=40,
             seeds=1, alphas="0,0.5")


def build_tokenizer(folder: Path):
    import tokenizers
    import transformers

    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {t: i for i, t in enumerate(task.VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def initial_model(tokenizer, seed):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(task.VOCAB), hidden_size=128, intermediate_size=384,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return transformers.LlamaForCausalLM(config)


def train_sft(out: Path, tokenizer, settings, seed):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = initial_model(tokenizer, seed)
    config = SFTConfig(output_dir=str(out / "sft-run"), num_train_epochs=settings["sft_epochs"],
                       per_device_train_batch_size=32, learning_rate=2e-3, lr_scheduler_type="cosine",
                       warmup_steps=20, logging_steps=50, save_strategy="no", report_to="none",
                       use_cpu=True, seed=seed, max_length=32, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(task.sft_rows(settings["sft_rows"])))
    trainer.train()
    trainer.save_model(str(out / "sft"))
    tokenizer.save_pretrained(out / "sft")
    return out / "sft"


def train_dpo(out: Path, sft: Path, tokenizer, settings, seed):
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    batch = 16
    rows = task.preference_rows(settings["dpo_rows"])
    rows = rows[: len(rows) // (5 * batch) * (5 * batch)]  # steps divide into fifths exactly
    steps = len(rows) // batch * settings["dpo_epochs"]
    save_every = steps // 5
    model = transformers.AutoModelForCausalLM.from_pretrained(sft)
    config = DPOConfig(output_dir=str(out / "dpo"), num_train_epochs=settings["dpo_epochs"],
                       per_device_train_batch_size=batch, learning_rate=settings["dpo_lr"], beta=0.1,
                       lr_scheduler_type="constant", logging_steps=20, save_strategy="steps",
                       save_steps=save_every, save_only_model=True, report_to="none",
                       use_cpu=True, seed=seed, max_length=32, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(rows))
    trainer.train()
    checkpoints = sorted((out / "dpo").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for checkpoint in checkpoints:
        tokenizer.save_pretrained(checkpoint)
    assert len(checkpoints) == 5, checkpoints
    return checkpoints, steps


def run(command, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{result.stderr[-3000:]}")
    return result


def choose_alpha(out: Path, sft: Path, checkpoint: Path, alphas: str):
    """α with the best dev reward, by `mergekit-expo search` with the task's scorer."""
    folder = out / "search" / checkpoint.name
    run([BIN / "mergekit-expo", "search", sft, checkpoint, "--scorer", "task:dev_reward",
         "--alphas", alphas, "--out", folder], cwd=HERE)
    rows = json.loads((folder / "results.json").read_text())["results"]
    best = max(rows, key=lambda r: r["score"])
    return best["alpha"], {r["alpha"]: r["score"] for r in rows}


def expo_merge(out: Path, sft: Path, checkpoint: Path, alpha: float) -> Path:
    target = out / "expo" / checkpoint.name
    config = out / "expo" / f"{checkpoint.name}.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"merge_method": "expo", "base_model": str(sft),
                                      "models": [{"model": str(checkpoint), "parameters": {"alpha": alpha}}]}))
    shutil.rmtree(target, ignore_errors=True)
    run([BIN / "mergekit-yaml", config, target])
    return target


def evaluate(model_dir: Path, prompts, seeds):
    """Mean test reward over prompts and sampling seeds, with a bootstrap 95% interval."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return evaluate_model(model, tokenizer, prompts, seeds)


def evaluate_model(model, tokenizer, prompts, seeds):
    per_prompt = [0.0] * len(prompts)
    for seed in range(seeds):
        for i, score in enumerate(task.mean_reward(model, tokenizer, prompts, seed=seed)):
            per_prompt[i] += score / seeds
    rng = random.Random(0)
    means = sorted(sum(rng.choices(per_prompt, k=len(per_prompt))) / len(per_prompt)
                   for _ in range(2000))
    return sum(per_prompt) / len(per_prompt), means[50], means[1949]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="./toy-alignment-output",
                        help="working and results folder (the committed results are in output/)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpo-lr", type=float, help="DPO learning rate  [default: 5e-4]")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.dpo_lr is not None:
        settings["dpo_lr"] = args.dpo_lr
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    tokenizer = build_tokenizer(out / "tokenizer")
    sft = train_sft(out, tokenizer, settings, args.seed)
    checkpoints, steps = train_dpo(out, sft, tokenizer, settings, args.seed)
    print(f"SFT and DPO done ({steps} DPO steps) in {time.perf_counter() - started:.0f} s", flush=True)

    test_prompts = task.prompts("test", settings["test_prompts"])
    rows = [{"model": "SFT", "step": 0, "alpha": None,
             **dict(zip(("reward", "low", "high"), evaluate(sft, test_prompts, settings["seeds"])))}]
    dev_curves = {}
    for checkpoint in checkpoints:
        step = int(checkpoint.name.split("-")[1])
        alpha, dev_curves[step] = choose_alpha(out, sft, checkpoint, settings["alphas"])
        merged = expo_merge(out, sft, checkpoint, alpha)
        for name, folder, used in (("DPO", checkpoint, None), ("DPO + ExPO", merged, alpha)):
            reward, low, high = evaluate(folder, test_prompts, settings["seeds"])
            rows.append({"model": name, "step": step, "alpha": used, "reward": reward,
                         "low": low, "high": high})
        print(f"step {step}: alpha={alpha} {rows[-2]['reward']:.3f} -> {rows[-1]['reward']:.3f}", flush=True)
    seconds = time.perf_counter() - started
    report(out, rows, dev_curves, steps, settings, seconds)


def report(out, rows, dev_curves, steps, settings, seconds):
    (out / "results.json").write_text(json.dumps({"rows": rows, "dev_reward_by_alpha": dev_curves,
                                                  "dpo_steps": steps, "settings": settings,
                                                  "seconds": round(seconds)}, indent=2))
    lines = ["| model | DPO step | % of DPO | α (dev-chosen) | test reward | 95% interval |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{100 * r['step'] / steps:.0f}%" if r["step"] else "-"
        alpha = "-" if r["alpha"] is None else f"{r['alpha']:g}"
        lines.append(f"| {r['model']} | {r['step']} | {share} | {alpha} | {r['reward']:.3f} | "
                     f"[{r['low']:.3f}, {r['high']:.3f}] |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + f"\n\nTotal time: {seconds / 60:.1f} min\n")
    print(table)
    plot(out / "results.png", rows, dev_curves)


def plot(path, rows, dev_curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sft = rows[0]
    for name, color in (("DPO", "tab:blue"), ("DPO + ExPO", "tab:orange")):
        picked = [r for r in rows if r["model"] == name]
        steps = [r["step"] for r in picked]
        left.errorbar(steps, [r["reward"] for r in picked],
                      yerr=[[r["reward"] - r["low"] for r in picked], [r["high"] - r["reward"] for r in picked]],
                      marker="o", capsize=3, label=name, color=color)
    left.axhline(sft["reward"], linestyle="--", color="gray", label="SFT")
    left.set(title="test reward vs DPO steps (α chosen on dev)", xlabel="DPO step", ylabel="reward")
    left.legend()
    for step, curve in sorted(dev_curves.items()):
        alphas = sorted(curve)
        right.plot(alphas, [curve[a] for a in alphas], marker=".", label=f"step {step}")
    right.set(title="dev reward vs α per DPO checkpoint", xlabel="α", ylabel="dev reward")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
