"""Per-α cost of the α search's engines against plain scoring of a merged model.

For the reward-model scorer (P prompts × N new tokens, greedy) and the preference
scorer (P pairs), one run each, same synthetic Llama-shaped pair and tiny reward model:

- one-at-a-time: the search's former loop (merged model; one prompt per `generate`,
  one answer per reward-model pass, one sequence per preference forward)
- plain: no search at all: the `mergekit-yaml` output loaded with transformers, one
  batched `generate` + batched reward-model pass (or batched preference forwards)
- engine (hf): `mergekit-expo search` per α, from its results.json (weights set in
  place, then the same batched work); the in-place update is reported separately

With ``--engine vllm`` (run it with .venv-vllm's python): the vLLM engine against a
plain ``vllm.LLM`` loaded from the merged checkpoint, same prompts and sampling; the
engine's start-up is reported once, apart from the per-α time.

Usage: python bench/search_engines.py [--hidden 768 --layers 12] [--prompts 32] [--new-tokens 64]
                                      [--engine hf|vllm]
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from mergekit_expo.search.hf_engine import HFEngine
from mergekit_expo.search.prompts import encode_answer, encode_prompt
from mergekit_expo.search.reward_model import RewardModel
from mergekit_expo.search.sampling import Sampling
from mergekit_expo.synthetic import PairSpec, model_config, write_pair

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment (beside python, else on PATH)."""
    return str(BIN / name) if (BIN / name).exists() else (shutil.which(name) or name)
HERE = Path(__file__).parent
ALPHAS = (0.0, 0.3)


def make_inputs(work: Path, spec: PairSpec, prompts: int):
    sft, aligned = write_pair(str(work / "pair"), spec)
    import transformers

    torch.manual_seed(1)
    config = model_config(PairSpec(hidden_size=64, num_layers=2), vocab_size=64)
    config.num_labels = 1
    transformers.LlamaForSequenceClassification(config).save_pretrained(work / "rm")
    transformers.AutoTokenizer.from_pretrained(sft).save_pretrained(work / "rm")
    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(60)}" for _ in range(n))  # noqa: E731
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": words(rng.randrange(8, 24))}) + "\n"
                                                for _ in range(prompts)))
    (work / "prefs.jsonl").write_text("".join(
        json.dumps({"prompt": words(rng.randrange(8, 24)), "chosen": words(24), "rejected": words(24)}) + "\n"
        for _ in range(prompts)))
    return sft, aligned


def merged(work: Path, sft, aligned, alpha) -> Path:
    out = work / f"merged-{alpha}"
    if not out.exists():
        config = work / f"expo-{alpha}.yml"
        config.write_text(yaml.safe_dump({"merge_method": "expo", "base_model": sft,
                                          "models": [{"model": aligned, "parameters": {"alpha": alpha}}]}))
        subprocess.run([tool("mergekit-yaml"), str(config), str(out), "--quiet"], check=True,
                       capture_output=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return out


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def one_at_a_time(model, tokenizer, judge, prompts, rows, new_tokens):
    sync = _synchronizer(model.device)
    """The former search loop: one prompt, one answer, one sequence at a time."""
    rewards, margins = [], []
    reward_seconds, _ = timed(lambda: [rewards.append(_one_reward(model, tokenizer, judge, p, new_tokens))
                                       for p in prompts] and sync())
    preference_seconds, _ = timed(lambda: [margins.append(_one_margin(model, tokenizer, r)) for r in rows]
                                  and sync())
    return reward_seconds, preference_seconds


def _synchronizer(device):
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def _one_reward(model, tokenizer, judge, prompt, new_tokens):
    ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=model.device)
    with torch.no_grad():
        output = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=3,
                                temperature=None, top_p=None, top_k=None)
    answer = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
    sequence = torch.tensor([judge.encode(prompt, answer)], device=judge.device)
    with torch.no_grad():
        return float(judge.model(input_ids=sequence).logits[0, 0])


def _one_margin(model, tokenizer, row):
    context = encode_prompt(tokenizer, row["prompt"])
    totals = []
    for answer in (row["chosen"], row["rejected"]):
        ids = torch.tensor([context + encode_answer(tokenizer, answer)], device=model.device)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        totals.append(float(logp[len(context) - 1:-1].gather(1, ids[0, len(context):, None]).sum()))
    return totals[0] - totals[1]


def plain(model, tokenizer, judge, prompts, rows, new_tokens, batch_size):
    """No search: a loaded merged model, batched generation and scoring."""
    engine = HFEngine.for_model(model, tokenizer, device=str(model.device), batch_size=batch_size)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]

    def rewards():
        answers = engine.generate(encoded, Sampling(max_new_tokens=new_tokens))
        return judge.scores([judge.encode(p, a) for p, a in zip(prompts, answers)])

    contexts = [encode_prompt(tokenizer, r["prompt"]) for r in rows for _ in (0, 1)]
    answers = [encode_answer(tokenizer, r[k]) for r in rows for k in ("chosen", "rejected")]
    reward_seconds, _ = timed(rewards)
    preference_seconds, _ = timed(lambda: engine.answer_logprobs(contexts, answers))
    return reward_seconds, preference_seconds


def search_per_alpha(work, sft, aligned, scorer, extra, batch_size):
    out = work / f"search-{scorer}"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([tool("mergekit-expo"), "search", str(sft), str(aligned), "--scorer", scorer,
                    "--alphas", ",".join(map(str, ALPHAS)), "--out", str(out), "--batch-size",
                    str(batch_size), *extra], check=True, capture_output=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"))
    rows = json.loads((out / "results.json").read_text())["results"]
    return statistics.median(r["seconds"] for r in rows), statistics.median(r["update_seconds"] for r in rows)


def vllm_rows(work, sft, aligned, prompts, rows, judge, new_tokens):
    """(plain vLLM seconds, engine seconds, update seconds) per scorer, and the start-up."""
    import vllm

    from mergekit_expo.search.scorers import PreferenceScorer, RewardModelScorer
    from mergekit_expo.search.vllm_engine import VLLMEngine

    sampling = Sampling(max_new_tokens=new_tokens)
    plain_seconds = {"reward": [], "preference": []}
    for alpha in ALPHAS:
        llm = vllm.LLM(model=str(merged(work, sft, aligned, alpha)), seed=0)
        tokenizer = llm.get_tokenizer()
        encoded = [encode_prompt(tokenizer, p) for p in prompts]

        def rewards(llm=llm, tokenizer=tokenizer, encoded=encoded):
            outputs = llm.generate([{"prompt_token_ids": p} for p in encoded],
                                   vllm.SamplingParams(max_tokens=new_tokens, temperature=0.0), use_tqdm=False)
            answers = [tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outputs]
            return judge.scores([judge.encode(p, a) for p, a in zip(prompts, answers)])

        pairs = [{"prompt_token_ids": encode_prompt(tokenizer, r["prompt"]) + encode_answer(tokenizer, r[k])}
                 for r in rows for k in ("chosen", "rejected")]
        plain_seconds["reward"].append(timed(rewards)[0])
        plain_seconds["preference"].append(timed(lambda llm=llm, pairs=pairs: llm.generate(
            pairs, vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False))[0])
        llm.llm_engine.engine_core.shutdown()
        del llm
    started, engine = timed(lambda: VLLMEngine(str(sft), str(aligned)))
    scorers = {"reward": RewardModelScorer(str(work / "prompts.jsonl"), judge, sampling),
               "preference": PreferenceScorer(str(work / "prefs.jsonl"))}
    found = {}
    for name, scorer in scorers.items():
        per_alpha, updates = [], []
        for alpha in ALPHAS:
            seconds, _ = timed(lambda alpha=alpha, scorer=scorer: (engine.set_alpha(alpha), scorer(engine)))
            per_alpha.append(seconds)
            updates.append(engine.update_seconds)
        found[name] = (statistics.median(plain_seconds[name]), statistics.median(per_alpha),
                       statistics.median(updates))
    engine.close()
    return found, started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", default=str(HERE / "results" / "search-engines"))
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (transformers engine)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="dtype the models run in (the checkpoints are bf16)")
    args = parser.parse_args()
    import transformers

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = PairSpec(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_layers=args.layers,
                    num_heads=max(1, args.hidden // 64), num_kv_heads=max(1, args.hidden // 64), delta_scale=0.05)
    sft, aligned = make_inputs(work, spec, args.prompts)
    prompts = [json.loads(line)["prompt"] for line in (work / "prompts.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (work / "prefs.jsonl").read_text().splitlines()]
    judge = RewardModel(str(work / "rm"), device=args.device, batch_size=args.batch_size)
    if args.engine == "vllm":
        found, started = vllm_rows(work, sft, aligned, prompts, rows, judge, args.new_tokens)
        print(f"vLLM engine, {args.prompts} prompts, {args.new_tokens} new tokens, {os.cpu_count()} CPU cores, "
              f"medians over α in {ALPHAS}, one run; engine start-up {started:.1f} s (once per search)")
        print(f"{'scorer':11} {'plain vLLM s':>13} {'engine s':>9} {'update s':>9} {'engine/plain':>13} "
              f"{'update share':>13}")
        for name, (flat, per_alpha, update) in found.items():
            print(f"{name:11} {flat:13.2f} {per_alpha:9.2f} {update:9.3f} {per_alpha / flat:12.2f}x "
                  f"{update / per_alpha:12.1%}")
        return

    loop, base = {"reward": [], "preference": []}, {"reward": [], "preference": []}
    for alpha in ALPHAS:
        folder = merged(work, sft, aligned, alpha)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, args.dtype)).to(args.device).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        for store, seconds in ((loop, one_at_a_time(model, tokenizer, judge, prompts, rows, args.new_tokens)),
                               (base, plain(model, tokenizer, judge, prompts, rows, args.new_tokens,
                                            args.batch_size))):
            store["reward"].append(seconds[0])
            store["preference"].append(seconds[1])
        del model
    engine = {
        "reward": search_per_alpha(work, sft, aligned, "reward-model",
                                   ["--data", str(work / "prompts.jsonl"), "--reward-model", str(work / "rm"),
                                    "--max-new-tokens", str(args.new_tokens), "--dtype", args.dtype,
                                    "--device", args.device],
                                   args.batch_size),
        "preference": search_per_alpha(work, sft, aligned, "preference",
                                       ["--data", str(work / "prefs.jsonl"), "--dtype", args.dtype,
                                        "--device", args.device],
                                       args.batch_size),
    }
    parameters = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(aligned).parameters())
    print(f"{parameters / 1e6:.1f}M-parameter Llama-shaped pair run in {args.dtype}, {args.prompts} prompts, "
          f"{args.new_tokens} new tokens, batch size {args.batch_size}, "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{os.cpu_count()} CPU cores'}, "
          f"medians over α in {ALPHAS}, one run")
    print(f"{'scorer':11} {'one-at-a-time s':>16} {'plain s':>8} {'engine s':>9} {'update s':>9} "
          f"{'engine/plain':>13} {'loop/engine':>12} {'update share':>13}")
    for name in ("reward", "preference"):
        per_alpha, update = engine[name]
        one, flat = statistics.median(loop[name]), statistics.median(base[name])
        print(f"{name:11} {one:16.2f} {flat:8.2f} {per_alpha:9.2f} {update:9.3f} {per_alpha / flat:12.2f}x "
              f"{one / per_alpha:11.1f}x {update / per_alpha:12.1%}")


if __name__ == "__main__":
    main()
