"""The batched transformers engine: batch size never changes a score beyond the stated
tolerance, prompts carry exactly one BOS, seeded sampling repeats, Hub ids resolve
offline from the cache, and bad inputs are one line."""

import json
import random
import shutil

import pytest
import torch

from conftest import expo_config, hub_cache, load_folder, make_adapter, run_cli, write_yaml


def words(rng, low, high):
    return " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randrange(low, high)))


@pytest.fixture(scope="module")
def fp32_pair(pair_factory):
    return pair_factory(dtype=torch.float32, delta_scale=0.3, hidden_size=128, intermediate_size=256)


def test_batch_size_does_not_change_answers_or_log_probs(fp32_pair, pair_factory):
    from mergekit_expo.search.hf_engine import HFEngine
    from mergekit_expo.search.prompts import encode_answer, encode_prompt
    from mergekit_expo.search.sampling import Sampling

    rng = random.Random(0)
    # float32: identical greedy answers, log-probs equal to 1e-6 (relative).
    # bfloat16: padding changes the kernels' rounding; log-probs agree to 1e-3 (README), and
    # an answer may differ only where the next token was a near-tie for the model.
    for pair, tolerance in ((fp32_pair, 1e-6), (pair_factory(delta_scale=0.3), 1e-3)):
        one, many = HFEngine(*map(str, pair), batch_size=1), HFEngine(*map(str, pair), batch_size=8)
        prompts = [encode_prompt(one.tokenizer, words(rng, 2, 20)) for _ in range(24)]
        answers = [encode_answer(one.tokenizer, words(rng, 2, 12)) for _ in range(24)]
        for engine in (one, many):
            engine.set_alpha(0.5)
        greedy = Sampling(max_new_tokens=24)
        if one.model.dtype == torch.float32:
            assert one.generate(prompts, greedy) == many.generate(prompts, greedy)
        else:  # bf16 generation is slow on a CPU: 8 prompts, 12 tokens
            short, greedy = prompts[:8], Sampling(max_new_tokens=12)
            alone, batched = one.generate(short, greedy), many.generate(short, greedy)
            parted = [(p, a, b) for p, a, b in zip(short, alone, batched) if a != b]
            assert all(near_tie_where_they_part(one, *row) for row in parted), parted
        for a, b in zip(one.answer_logprobs(prompts, answers), many.answer_logprobs(prompts, answers)):
            assert abs(a - b) <= tolerance * max(1.0, abs(a))


def near_tie_where_they_part(engine, prompt, first, second, gap=0.1):
    """Whether the model's logits for the two first differing tokens are within ``gap``."""
    eos = engine.tokenizer.eos_token_id  # an answer that stops first chose EOS there
    ids = [engine.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in (first, second)]
    common = next(i for i, (x, y) in enumerate(zip(*ids)) if x != y)
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt + ids[0][:common]])).logits[0, -1].float()
    return abs(float(logits[ids[0][common]] - logits[ids[1][common]])) <= gap


def test_batched_generation_matches_one_prompt_at_a_time_with_transformers(fp32_pair):
    import transformers

    from mergekit_expo.search.hf_engine import HFEngine
    from mergekit_expo.search.sampling import Sampling

    engine = HFEngine(*map(str, fp32_pair), batch_size=8)
    engine.set_alpha(0.0)
    model = transformers.AutoModelForCausalLM.from_pretrained(fp32_pair[1])
    rng = random.Random(1)
    prompts = [words(rng, 2, 15) for _ in range(12)]
    expected = []
    for prompt in prompts:
        ids = engine.tokenizer(prompt, return_tensors="pt")
        output = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=3)
        expected.append(engine.tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    encoded = [engine.tokenizer(p)["input_ids"] for p in prompts]
    assert engine.generate(encoded, Sampling(max_new_tokens=16)) == expected


def test_seeded_sampling_repeats(fp32_pair):
    from mergekit_expo.search.hf_engine import HFEngine
    from mergekit_expo.search.sampling import Sampling

    engine = HFEngine(*map(str, fp32_pair), batch_size=4)
    engine.set_alpha(0.3)
    rng = random.Random(2)
    prompts = [engine.tokenizer(words(rng, 2, 8))["input_ids"] for _ in range(8)]
    sampled = lambda seed: engine.generate(prompts, Sampling(max_new_tokens=12, sample=True,  # noqa: E731
                                                             temperature=0.7, top_p=0.9, top_k=50, seed=seed))
    assert sampled(3) == sampled(3)
    assert sampled(3) != sampled(4)


# -- exactly one BOS ---------------------------------------------------------------

BOS_TEMPLATE = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}" \
               "{% if add_generation_prompt %}<|im_start|>{% endif %}"
PLAIN_TEMPLATE = BOS_TEMPLATE.removeprefix("{{ bos_token }}")


def llama_like_tokenizer(folder, template):
    """A tokenizer that adds BOS to every text, like Llama's, with a chat template."""
    import tokenizers
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    backend = tokenizer.backend_tokenizer
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("template", [BOS_TEMPLATE, PLAIN_TEMPLATE], ids=["BOS-initial", "no-BOS"])
def test_prompts_carry_exactly_one_bos_and_scores_use_those_ids(template, fp32_pair, tmp_path):
    import transformers

    from mergekit_expo.search.hf_engine import HFEngine
    from mergekit_expo.search.prompts import encode_conversation, encode_prompt
    from mergekit_expo.search.scorers import PreferenceScorer

    tokenizer = llama_like_tokenizer(fp32_pair[1], template)
    bos = tokenizer.bos_token_id
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "w1 w2"}], tokenize=False,
                                             add_generation_prompt=True)
    assert tokenizer(rendered)["input_ids"][:2] == ([bos, bos] if template == BOS_TEMPLATE else [bos, 64])
    for ids in (encode_prompt(tokenizer, "w1 w2"), encode_conversation(tokenizer, "w1 w2", "w3")):
        assert ids[0] == bos and ids.count(bos) == 1, ids

    model = transformers.AutoModelForCausalLM.from_pretrained(fp32_pair[1], dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    rows = [{"prompt": "w1 w2", "chosen": "w3 w4", "rejected": "w5"},
            {"prompt": "w7", "chosen": "w8", "rejected": "w9 w10 w11"}]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    score = PreferenceScorer(str(data))(HFEngine.for_model(model, tokenizer, batch_size=4))

    margins = []
    for row in rows:  # direct: one BOS, the template's tokens, then the answer
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                             tokenize=False, add_generation_prompt=True)
        context = [bos] + tokenizer(text.removeprefix("<s>"), add_special_tokens=False)["input_ids"]
        totals = []
        for answer in (row["chosen"], row["rejected"]):
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + answer_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            totals.append(sum(float(logp[i - 1, ids[0, i]]) for i in range(len(context), ids.shape[1])))
        margins.append(totals[0] - totals[1])
    assert score.extra["mean_margin"] == pytest.approx(sum(margins) / 2, rel=1e-5)
    assert score.value == sum(m > 0 for m in margins) / 2


# -- Hub ids -------------------------------------------------------------------------

def test_hub_ids_resolve_offline_from_the_cache(tmp_path, pair_factory, monkeypatch):
    from huggingface_hub import constants

    pair = pair_factory(delta_scale=0.3)
    cache = hub_cache(tmp_path / "hub", {"org/sft": pair[0], "org/aligned": pair[1]})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # as HF_HUB_CACHE does in a process
    env = {"HF_HUB_CACHE": str(cache)}
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "chosen": "w3", "rejected": "w4 w5"}) + "\n")

    config = write_yaml(tmp_path / "hub.yml", expo_config("org/sft", "org/aligned", 0.4))
    run_cli("mergekit-expo", "run", config, tmp_path / "out", cwd=tmp_path, env=env)
    local = write_yaml(tmp_path / "local.yml", expo_config(*pair, 0.4))
    run_cli("mergekit-yaml", local, tmp_path / "reference")
    written, expected = load_folder(tmp_path / "out"), load_folder(tmp_path / "reference")
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    assert "org/aligned" in (tmp_path / "out" / "mergekit_config.yml").read_text()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "org/aligned" in card and "snapshots" not in card

    run_cli("mergekit-expo", "search", "org/sft", "org/aligned", "--data", data, "--alphas", "0,0.4",
            "--out", tmp_path / "search", cwd=tmp_path, env=env)
    settings = json.loads((tmp_path / "search" / "results.json").read_text())["settings"]
    assert settings["sft"] == "org/sft" and settings["aligned"] == "org/aligned"

    make_adapter(pair[0], tmp_path / "adapter", modules_to_save=["lm_head"])
    run_cli("mergekit-expo", "lora", tmp_path / "adapter", tmp_path / "expo-adapter", "--base", "org/sft",
            cwd=tmp_path, env=env)

    missing = run_cli("mergekit-expo", "search", "org/absent", "org/aligned", "--data", data,
                      "--out", tmp_path / "s2", cwd=tmp_path, env=env, check=False)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("Error:")]
    assert missing.returncode == 1 and len(errors) == 1, missing.stderr
    assert "org/absent is not in the Hugging Face cache" in errors[0] and "hf download org/absent" in errors[0]


# -- bad inputs ----------------------------------------------------------------------

def test_prompts_longer_than_the_context_are_skipped_and_counted(tmp_path, pair_factory):
    pair = pair_factory(delta_scale=0.3)
    data = tmp_path / "prefs.jsonl"
    long_prompt = " ".join(["w1"] * 300)  # the tiny models take 256 positions
    data.write_text("".join(json.dumps(r) + "\n" for r in (
        {"prompt": "w1 w2", "chosen": "w3", "rejected": "w4"},
        {"prompt": long_prompt, "chosen": "w3", "rejected": "w4"})))
    result = run_cli("mergekit-expo", "search", *pair, "--data", data, "--alphas", "0", "--out", tmp_path / "s")
    assert "1 of 2 preference rows exceed the model's context of 256 tokens" in result.stderr
    row = json.loads((tmp_path / "s" / "results.json").read_text())["results"][0]
    assert row["n"] == 1 and row["extra"]["skipped"] == 1


def test_bad_engine_inputs(tmp_path, pair_factory):
    import transformers

    pair = pair_factory(delta_scale=0.3)
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2"}) + "\n")
    two_labels = tmp_path / "rm2"
    from mergekit_expo.synthetic import PairSpec, model_config

    config = model_config(PairSpec(), vocab_size=64)
    config.num_labels = 2
    transformers.LlamaForSequenceClassification(config).save_pretrained(two_labels)
    transformers.AutoTokenizer.from_pretrained(pair[0]).save_pretrained(two_labels)
    no_pad = tmp_path / "no-pad"
    shutil.copytree(pair[1], no_pad)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = no_pad / name
        if path.exists():
            settings = json.loads(path.read_text())
            for key in ("pad_token", "eos_token"):
                settings.pop(key, None)
            path.write_text(json.dumps(settings))
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "w1 w2", "chosen": "w3", "rejected": "w4"}) + "\n")
    cases = [
        ((*pair, "--data", prefs, "--batch-size", "0"), "must be at least 1", 2),
        ((*pair, "--data", data, "--scorer", "reward-model", "--reward-model", two_labels),
         "has 2 outputs (num_labels)", 1),
        ((pair[0], no_pad, "--data", prefs), "has neither a pad nor an EOS token", 1),
        ((*pair, "--data", prefs, "--temperature", "0", "--sample"), "--temperature must be > 0", 1),
    ]
    for arguments, message, code in cases:
        result = run_cli("mergekit-expo", "search", *arguments, "--alphas", "0", "--out", tmp_path / "o",
                         check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode == code and len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_batcher_halves_on_out_of_memory_and_keeps_order():
    from mergekit_expo.errors import ExpoInputError
    from mergekit_expo.search.batching import Batcher

    seen = []

    def squares(batch):  # "fits" only 3 items at a time
        seen.append(len(batch))
        if len(batch) > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [len(item) ** 2 for item in batch]

    batcher = Batcher(None, "cuda")
    items = ["a" * n for n in (3, 1, 4, 1, 5, 9, 2, 6)]
    assert batcher.run(items, squares) == [n * n for n in (3, 1, 4, 1, 5, 9, 2, 6)]
    assert seen[:3] == [8, 4, 2] and batcher.size == 2  # half of what failed, remembered
    with pytest.raises(ExpoInputError, match="out of memory with batch size 1"):
        oom = RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")
        Batcher(1, "cpu").run(["aaaa"], lambda batch: (_ for _ in ()).throw(oom))
    with pytest.raises(ValueError):  # other errors are not retried
        Batcher(4, "cpu").run(["a"], lambda batch: (_ for _ in ()).throw(ValueError("bad")))


@pytest.mark.parametrize("engine,option,value,owner", [
    ("hf", "--tensor-parallel-size", "2", "vllm"),
    ("hf", "--gpu-memory-utilization", "0.5", "vllm"),
    ("hf", "--max-model-len", "128", "vllm"),
    ("vllm", "--device", "cpu", "hf"),
    ("vllm", "--batch-size", "4", "hf"),
])
def test_an_option_of_the_other_engine_is_one_error(tmp_path, engine, option, value, owner):
    from click.testing import CliRunner

    from mergekit_expo.cli import main

    out = tmp_path / "search"
    result = CliRunner().invoke(main, ["search", str(tmp_path / "sft"), str(tmp_path / "aligned"),
                                       "--engine", engine, option, value, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (f"Error: {option} is an option of --engine {owner}, not of --engine "
                                     f"{engine}: drop it, or use --engine {owner}")
    assert not out.exists()


def test_with_vllm_device_and_batch_size_place_the_reward_model(tmp_path):
    # not ignored there: the reward model runs on the transformers side
    from click.testing import CliRunner

    from mergekit_expo.cli import main

    result = CliRunner().invoke(main, ["search", str(tmp_path / "sft"), str(tmp_path / "aligned"),
                                       "--engine", "vllm", "--scorer", "reward-model", "--device", "cpu",
                                       "--batch-size", "4", "--out", str(tmp_path / "search")])
    assert "is an option of" not in result.stderr
    # it got past the option check, to the next one (this venv has no vLLM)
    assert result.stderr.startswith("Error: --engine vllm needs vLLM"), result.stderr
