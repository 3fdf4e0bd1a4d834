"""The toy task: sort a few digits. The reward is programmatic and no model sees it.

Prompt ``sort 7 2 9 4 =``; the ideal answer is ``2 4 7 9``. The reward of an answer
is the fraction of positions holding the right digit, minus a penalty for the wrong
length, in [-1, 1]. The demonstrator that writes SFT data is mediocre (it sorts
correctly only some of the time); preference pairs rank two of its answers by reward.
"""

import random
from typing import List

DIGITS = [str(d) for d in range(10)]
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
VOCAB = SPECIAL + DIGITS + ["sort", "="]
MIN_LEN, MAX_LEN = 3, 6
SPLIT_SEEDS = {"sft": 1, "dpo": 2, "dev": 3, "test": 4}


def prompt_digits(rng: random.Random) -> List[str]:
    return [rng.choice(DIGITS) for _ in range(rng.randint(MIN_LEN, MAX_LEN))]


def prompt_text(digits: List[str]) -> str:
    return "sort " + " ".join(digits) + " ="


def digits_of(prompt: str) -> List[str]:
    return prompt.removeprefix("sort ").removesuffix(" =").split()


def reward(prompt: str, answer: str) -> float:
    """Programmatic reward: per-position correctness minus a length penalty."""
    target = sorted(digits_of(prompt))
    words = answer.split()
    hits = sum(1 for got, want in zip(words, target) if got == want)
    penalty = abs(len(words) - len(target)) / len(target)
    return max(-1.0, min(1.0, hits / len(target) - penalty))


def demonstrator(digits: List[str], rng: random.Random) -> str:
    """A mediocre teacher: sorted with random adjacent swaps, sometimes a dropped digit."""
    answer = sorted(digits)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        i = rng.randrange(len(answer) - 1)
        answer[i], answer[i + 1] = answer[i + 1], answer[i]
    if rng.random() < 0.15:
        del answer[rng.randrange(len(answer))]
    return " ".join(answer)


def prompts(split: str, count: int) -> List[str]:
    rng = random.Random(SPLIT_SEEDS[split])
    return [prompt_text(prompt_digits(rng)) for _ in range(count)]


def sft_rows(count: int) -> List[dict]:
    rng = random.Random(10)
    return [{"prompt": p, "completion": " " + demonstrator(digits_of(p), rng)}
            for p in prompts("sft", count)]


def preference_rows(count: int) -> List[dict]:
    rng = random.Random(20)
    rows = []
    for p in prompts("dpo", count):
        first, second = demonstrator(digits_of(p), rng), demonstrator(digits_of(p), rng)
        if reward(p, first) == reward(p, second):
            continue  # no preference between equally good answers
        chosen, rejected = sorted([first, second], key=lambda a: -reward(p, a))
        rows.append({"prompt": p, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


def generate(model, tokenizer, prompt_list: List[str], *, seed=None, temperature=0.7) -> List[str]:
    """Answers for a batch of prompts: greedy when seed is None, else seeded sampling."""
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(prompt_list, return_tensors="pt", padding=True)
    options = dict(max_new_tokens=MAX_LEN + 2, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if seed is None:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(seed)
        options.update(do_sample=True, temperature=temperature, top_p=None, top_k=None)
    with torch.no_grad():
        output = model.generate(**batch, **options)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def mean_reward(model, tokenizer, prompt_list, seed=None) -> List[float]:
    answers = generate(model, tokenizer, prompt_list, seed=seed)
    return [reward(p, a) for p, a in zip(prompt_list, answers)]


def test_rewards_per_prompt(model, tokenizer, prompt_list, seeds: int) -> List[float]:
    """Each prompt's reward sampled as on test, the mean over sampling seeds 0 .. seeds-1."""
    per_prompt = [0.0] * len(prompt_list)
    for seed in range(seeds):
        for i, value in enumerate(mean_reward(model, tokenizer, prompt_list, seed=seed)):
            per_prompt[i] += value / seeds
    return per_prompt


DEV_PROMPTS = 200


def dev_reward(model, tokenizer) -> float:
    """Scorer for `mergekit-expo search --scorer task:dev_reward` (greedy, dev split)."""
    scores = mean_reward(model, tokenizer, prompts("dev", DEV_PROMPTS))
    return sum(scores) / len(scores)


DEV_SAMPLING_SEEDS = (100, 101)


def dev_rewards_sampled(model, tokenizer) -> List[float]:
    """Per-prompt dev reward when sampling as on test (temperature 0.7), mean of the seeds."""
    dev = prompts("dev", DEV_PROMPTS)
    per_seed = [mean_reward(model, tokenizer, dev, seed=seed) for seed in DEV_SAMPLING_SEEDS]
    return [sum(scores) / len(scores) for scores in zip(*per_seed)]


def dev_reward_sampled(model, tokenizer) -> float:
    """Scorer for `mergekit-expo search --scorer task:dev_reward_sampled` (protocol v3):
    the dev split sampled as on test, so that dev is not at its ceiling."""
    scores = dev_rewards_sampled(model, tokenizer)
    return sum(scores) / len(scores)


def dev_rewards_sampled_rows(model, tokenizer, rows=None) -> List[float]:
    """Scorer for `mergekit-expo search --race --scorer task:dev_rewards_sampled_rows` (protocol
    v4): the sampled dev reward of each dev prompt in ``rows`` (indices; all when None), mean over
    DEV_SAMPLING_SEEDS. The prompts of one call are sampled as one batch."""
    dev = prompts("dev", DEV_PROMPTS)
    chosen = dev if rows is None else [dev[i] for i in rows]
    per_seed = [mean_reward(model, tokenizer, chosen, seed=seed) for seed in DEV_SAMPLING_SEEDS]
    return [sum(scores) / len(scores) for scores in zip(*per_seed)]


dev_rewards_sampled_rows.rows = DEV_PROMPTS  # how many dev rows a race can draw from
