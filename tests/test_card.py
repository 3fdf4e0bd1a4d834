"""Model cards: Hub metadata (lineage, relation, tags) read back with huggingface_hub and YAML,
the SFT and aligned roles, α in words, the α search with its guard, and `mergekit-expo card`
on plain mergekit-yaml / mergekit-multi outputs and on folders it must leave alone."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import ModelCard

from conftest import CONFIGS, expo_config, hub_cache, run_cli, write_yaml
from mergekit_expo.cli import main

PAPER = "https://arxiv.org/abs/2404.16792"
MARK = "<!-- written by mergekit-expo card; sha256 "


@pytest.fixture(scope="module")
def pair(pair_factory):
    return pair_factory(delta_scale=0.3)


@pytest.fixture
def offline_hub(tmp_path, pair, monkeypatch):
    """org/sft and org/aligned in a hand-made Hugging Face cache, the Hub unreachable."""
    from huggingface_hub import constants

    cache = hub_cache(tmp_path / "hub", {"org/sft": pair[0], "org/aligned": pair[1]})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return cache


def expo(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def ok(*args):
    result = expo(*args)
    assert result.exit_code == 0, result.output
    return result


def refused(*args):
    result = expo(*args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def front_matter(path: Path) -> dict:
    """The YAML block as the Hub reads it, parsed without huggingface_hub."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def snapshot(root: Path) -> dict:
    """Every path under root with its bytes' hash, mode and modification time."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            state[str(path.relative_to(root))] = (digest, info.st_mode, info.st_mtime_ns)
    return state


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


# -- run and search --write-best with Hub ids -----------------------------------------

def test_run_with_hub_ids_writes_the_lineage_card(tmp_path, offline_hub):
    config = write_yaml(tmp_path / "hub.yml", expo_config("org/sft", "org/aligned", 0.4))
    ok("run", config, "./out")
    readme = tmp_path / "out" / "README.md"
    card = ModelCard.load(readme)
    assert card.data.base_model == ["org/sft", "org/aligned"]
    assert card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers"
    assert card.data.tags[:3] == ["mergekit", "merge", "expo"]
    assert front_matter(readme) == card.data.to_dict()
    text = card.text
    assert "**SFT model** (θ_sft, mergekit's `base_model`): [org/sft](https://huggingface.co/org/sft)" in text
    assert ("**aligned model** (θ_aligned, trained from the SFT model): "
            "[org/aligned](https://huggingface.co/org/aligned)") in text
    assert "- **α**: 0.4\n" in text and "θ = θ_aligned + α · (θ_aligned − θ_sft)" in text
    assert f"]({PAPER})" in text and "snapshots" not in text and str(offline_hub) not in text
    assert f"```yaml\n{config.read_text().rstrip()}\n```" in section(text, "Configuration")
    assert 'from_pretrained("out"' in section(text, "How to load")
    assert text.rstrip().splitlines()[-1].startswith(MARK)


def test_search_write_best_with_a_guard_explains_the_choice(tmp_path, offline_hub):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}", "chosen": f"w{i + 3} w{i}",
                                        "rejected": f"w{i + 9} w{i + 4} w{i + 1}"}) + "\n" for i in range(8)))
    (tmp_path / "card_guard.py").write_text(
        "def neg_embedding_norm(model, tokenizer):\n"
        "    return -float(model.model.embed_tokens.weight.float().norm())\n")
    ok("search", "org/sft", "org/aligned", "--data", data, "--guard", "card_guard:neg_embedding_norm",
       "--max-drop", "0.05", "--alphas", "0,0.2,0.5,1", "--out", "./s", "--write-best", "./best")
    results = json.loads((tmp_path / "s" / "results.json").read_text())["results"]
    baseline = next(r for r in results if r["alpha"] == 0)["guard"]
    excluded = [r for r in results if r["guard"] < baseline - 0.05]
    allowed = [r for r in results if r not in excluded]
    assert excluded, "extrapolating grows the embedding norm: the guard must exclude some α"
    best = max(allowed, key=lambda r: (r["score"], r["extra"]["mean_margin"]))

    readme = tmp_path / "best" / "README.md"
    card = ModelCard.load(readme)
    assert card.data.base_model == ["org/sft", "org/aligned"] and card.data.base_model_relation == "merge"
    assert {"mergekit", "merge", "expo"} <= set(front_matter(readme)["tags"])
    chosen = section(card.text, "How α was chosen")
    assert "scorer: `preference`" in chosen and "data: `prefs.jsonl`, 8 rows" in chosen
    assert "engine: transformers" in chosen and "guard: `card_guard:neg_embedding_norm`" in chosen
    assert "| α | score | 95% interval | guard | guard 95% interval |  |" in chosen
    table = {line.split(" | ")[0][2:]: line for line in chosen.splitlines() if line.startswith("| ") and
             line[2].isdigit()}
    assert sorted(table) == ["0", "0.2", "0.5", "1"]
    for row in results:
        line = table[f"{row['alpha']:g}"]
        assert f"| {row['score']:.4g} | [{row['low']:.4g}, {row['high']:.4g}] | {row['guard']:.4g} |" in line
        assert ("excluded by the guard" in line) == (row in excluded)
        assert ("**chosen**" in line) == (row["alpha"] == best["alpha"])
    assert f"α = {best['alpha']:g} has the highest score" in chosen
    excluded_alphas = ", ".join(f"{r['alpha']:g}" for r in excluded)
    assert f"Excluded: α = {excluded_alphas}, whose guard fell" in chosen
    assert "![score against α](score_vs_alpha.png)" in chosen
    plot = "score_vs_alpha.png"
    assert (tmp_path / "best" / plot).read_bytes() == (tmp_path / "s" / plot).read_bytes()
    assert f"- **α**: {best['alpha']:g}" in card.text


# -- α in words -----------------------------------------------------------------------

# Slices, the second with a gradient: tensors outside the layer stack do not all take one
# slice's value (measured: embed_tokens takes the first slice's, norm and lm_head the
# start of the second slice's gradient).
SLICES_WITH_A_GRADIENT = {
    "merge_method": "expo", "base_model": "./models/sft", "dtype": "bfloat16",
    "slices": [{"sources": [{"model": "./models/aligned", "layer_range": [0, 1],
                             "parameters": {"alpha": 0.2}},
                            {"model": "./models/sft", "layer_range": [0, 1]}]},
               {"sources": [{"model": "./models/aligned", "layer_range": [1, 2],
                             "parameters": {"alpha": [0.3, 0.7]}},
                            {"model": "./models/sft", "layer_range": [1, 2]}]}]}


def alpha_lines(text: str) -> list:
    """The card's α: the line after "**α**:", or its sub-items."""
    block = text.split("- **α**:", 1)[1].split("\n\n", 1)[0]
    return [block.strip()] if "\n" not in block else [line[4:] for line in block.splitlines()[1:]]


@pytest.mark.parametrize("name, expected", [
    ("expo.yml", ["0.3"]),
    ("expo-gradient.yml", ["`model.embed_tokens`, `model.norm`, `lm_head`: 0.1",
                           "every tensor of the layers: 0.1 at layer 0; 0.5 at layer 1"]),
    ("expo-keep-embeddings.yml", ["`model.embed_tokens`, `model.norm`, `lm_head`, `input_layernorm`, "
                                  "`post_attention_layernorm` in every layer: 0 (the aligned model's values)",
                                  "every other tensor: 0.4"]),
    ("expo-slices.yml", ["`model.embed_tokens`: 0.2", "`model.norm`, `lm_head`: 0.5",
                         "every tensor of the layers: 0.2 at layer 0; 0.5 at layer 1"]),
    ("slices with a gradient", ["`model.embed_tokens`: 0.2", "`model.norm`, `lm_head`: 0.3",
                                "every tensor of the layers: 0.2 at layer 0; 0.7 at layer 1"]),
])
def test_the_card_states_the_alpha_each_tensor_was_merged_with(models_dir, monkeypatch, name, expected):
    from conftest import load_folder
    from fp64_reference import fidelity

    monkeypatch.chdir(models_dir)
    config = models_dir / "c.yml"
    if name.endswith(".yml"):
        shutil.copy(CONFIGS / name, config)
    else:
        write_yaml(config, SLICES_WITH_A_GRADIENT)
    ok("run", config, "./out")
    assert alpha_lines(ModelCard.load(models_dir / "out" / "README.md").text) == expected
    # What the merge did, tensor by tensor: the one α among the card's whose fp64 result,
    # rounded once, is every element of the output tensor.
    said = {float(word.split(" ")[0]) for line in expected for word in line.split(": ", 1)[-1].split("; ")}
    out = load_folder(models_dir / "out")
    sft, aligned = load_folder(models_dir / "models/sft"), load_folder(models_dir / "models/aligned")
    measured = {tensor: [a for a in sorted(said) if fidelity(value, sft[tensor], aligned[tensor], a)[0] == 1]
                for tensor, value in out.items()}
    from mergekit_expo.search.space import planned_tensor_alphas

    planned = planned_tensor_alphas(yaml.safe_load(config.read_text()))  # what the words describe
    assert measured == {tensor: [alpha] for tensor, alpha in planned.items()}


@pytest.fixture(scope="module")
def four_layers(pair_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("deep")
    for link, target in zip(("sft", "aligned"), pair_factory(num_layers=4)):
        (root / link).symlink_to(target, target_is_directory=True)
    return root


@pytest.mark.parametrize("parameters, top_level, expected", [
    ({}, None, ["0.3"]),
    ({"alpha": [0.1, 0.4]}, None, ["`model.embed_tokens`, `model.norm`, `lm_head`: 0.1",
                                   "every tensor of the layers: from 0.1 at layer 0 to 0.4 at layer 3, "
                                   "linear in depth"]),
    ({"alpha": [0.1, 0.5, 0.2]}, None, ["`model.embed_tokens`, `model.norm`, `lm_head`: 0.1",
                                        "every tensor of the layers: 0.1 at layer 0; 0.366667 at layer 1; "
                                        "0.4 at layer 2; 0.2 at layer 3"]),
    ({"alpha": [{"filter": "mlp", "value": 0.4}]}, None,
     ["`mlp.up_proj`, `mlp.gate_proj`, `mlp.down_proj` in every layer: 0.4", "every other tensor: 0.3"]),
    ({"alpha": [{"filter": "mlp", "value": 0.4}]}, {"alpha": 0.1},  # falls through to the top level
     ["`mlp.up_proj`, `mlp.gate_proj`, `mlp.down_proj` in every layer: 0.4", "every other tensor: 0.1"]),
    ({"alpha": [{"filter": "mlp", "value": 0.5}, {"value": 0}, {"filter": "attn", "value": 9}]}, None,
     ["`mlp.up_proj`, `mlp.gate_proj`, `mlp.down_proj` in every layer: 0.5",
      "every other tensor: 0 (the aligned model's values)"]),
    ({"alpha": "1e-1"}, None, ["0.1"]),
])
def test_alpha_in_words_is_what_mergekit_plans(four_layers, monkeypatch, parameters, top_level, expected):
    from mergekit_expo.card.alpha_words import alpha_in_words

    monkeypatch.chdir(four_layers)
    config = {"merge_method": "expo", "base_model": "./sft", "parameters": top_level,
              "models": [{"model": "./aligned", "parameters": parameters or None}]}
    assert alpha_in_words(config) == expected


def test_local_inputs_are_named_in_the_text_not_the_metadata(models_dir, monkeypatch):
    monkeypatch.chdir(models_dir)
    shutil.copy(CONFIGS / "expo-gradient.yml", models_dir / "g.yml")
    ok("run", "g.yml", "./out")
    readme = models_dir / "out" / "README.md"
    metadata = front_matter(readme)
    assert "base_model" not in metadata and "base_model_relation" not in metadata
    assert metadata["tags"][:3] == ["mergekit", "merge", "expo"] and metadata["library_name"] == "transformers"
    text = ModelCard.load(readme).text
    assert "mergekit's `base_model`): `./models/sft`" in text and "SFT model): `./models/aligned`" in text
    assert "  - every tensor of the layers: 0.1 at layer 0; 0.5 at layer 1\n" in text


def test_card_on_our_own_output_keeps_it_replaceable(models_dir, monkeypatch):
    # card rewrites README.md (and adds the plot) in a run output: the output's manifest
    # must list them, so that --overwrite still knows the folder as its own.
    monkeypatch.chdir(models_dir)
    shutil.copy(CONFIGS / "expo.yml", models_dir / "e.yml")
    ok("run", "e.yml", "./out")
    data = models_dir / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "chosen": "w3", "rejected": "w4 w5"}) + "\n")
    ok("search", "./models/sft", "./models/aligned", "--data", data, "--alphas", "0,0.3", "--out", "./s")
    ok("card", "./out", "--search", "./s")
    assert (models_dir / "out" / "score_vs_alpha.png").is_file()
    ok("run", "e.yml", "./out", "--overwrite")
    assert not (models_dir / "out" / "score_vs_alpha.png").exists()
    (models_dir / "out" / "notes.txt").write_text("mine\n")
    ok("card", "./out", "--search", "./s")
    assert "notes.txt" in refused("run", "e.yml", "./out", "--overwrite")
    assert (models_dir / "out" / "notes.txt").read_text() == "mine\n"


def test_rewriting_a_searched_card_keeps_how_alpha_was_chosen(models_dir, monkeypatch):
    monkeypatch.chdir(models_dir)
    data = models_dir / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "chosen": "w3", "rejected": "w4 w5"}) + "\n")
    ok("search", "./models/sft", "./models/aligned", "--data", data, "--alphas", "0,0.3", "--out", "./s",
       "--write-best", "./best")
    readme = models_dir / "best" / "README.md"
    written = readme.read_bytes()
    assert "## How α was chosen" in written.decode() and "](score_vs_alpha.png)" in written.decode()
    ok("card", "./best")  # no --search: the section and its plot stay
    assert readme.read_bytes() == written
    assert (models_dir / "best" / "score_vs_alpha.png").is_file()


def test_a_sampled_search_counts_its_candidates_exactly(models_dir, monkeypatch):
    monkeypatch.chdir(models_dir)
    data = models_dir / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "chosen": "w3", "rejected": "w4 w5"}) + "\n")
    ok("search", "./models/sft", "./models/aligned", "--data", data, "--space", "depth", "--trials", 2,
       "--out", "./s", "--write-best", "./best")
    rows = json.loads((models_dir / "s" / "results.json").read_text())["results"]
    zero = [r for r in rows if not any(r["alphas"].values())]
    assert len(zero) == 1 and len(rows) == 3  # α = 0 everywhere, then the 2 trials
    text = (models_dir / "best" / "README.md").read_text()
    assert ("each coordinate in [0, 1]; 3 candidates: α = 0 everywhere, then 2 drawn by optuna's `tpe` "
            "sampler\n") in text


# -- mergekit-expo card ---------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_output(pair_factory, tmp_path_factory):
    """What plain `mergekit-yaml` writes for an expo config (through the start-up hook)."""
    root = tmp_path_factory.mktemp("plain")
    sft, aligned = pair_factory(delta_scale=0.3)
    (root / "models").mkdir()
    (root / "models" / "sft").symlink_to(sft)
    (root / "models" / "aligned").symlink_to(aligned)
    shutil.copy(CONFIGS / "expo.yml", root / "expo.yml")
    run_cli("mergekit-yaml", "expo.yml", "./out", cwd=root)
    return root


def test_card_upgrades_a_plain_mergekit_yaml_output(plain_output, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(plain_output, root, symlinks=True)
    monkeypatch.chdir(root)
    out = root / "out"
    mergekit_card = (out / "README.md").read_text()
    assert ("merged using the [ExPO (extrapolating the aligned model away from its SFT base)]"
            f"({PAPER}) merge method using ./models/sft as a base") in mergekit_card
    assert "* ./models/aligned" in mergekit_card  # what plain mergekit-yaml can say: roles by position

    before = snapshot(out)
    assert "pass --overwrite to replace it with the ExPO card" in refused("card", "./out")
    assert snapshot(out) == before
    assert ok("card", "./out", "--overwrite").output == f"wrote {out.relative_to(root)}/README.md\n"
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "README.md"} == {k: v for k, v in before.items() if k != "README.md"}
    card = ModelCard.load(out / "README.md")
    assert card.data.tags[:3] == ["mergekit", "merge", "expo"] and "**α**: 0.3" in card.text
    ok("card", "./out")  # its own unedited card: rewritten without --overwrite

    (out / "README.md").write_text((out / "README.md").read_text().replace("# out", "# my model"))
    edited = snapshot(out)
    assert "was edited after mergekit-expo wrote it" in refused("card", "./out", "--overwrite")
    assert snapshot(out) == edited


def test_card_warns_of_a_key_mergekit_ignored(pair_factory, tmp_path):
    """`alhpa: 0.5` merges at the default α under plain mergekit-yaml: the card states what was
    merged, and says in one warning line which key mergekit ignored."""
    sft, aligned = pair_factory(delta_scale=0.3)
    config = expo_config(sft, aligned)
    config["models"][0]["parameters"] = {"alhpa": 0.5}
    write_yaml(tmp_path / "typo.yml", config)
    run_cli("mergekit-yaml", "typo.yml", "./out", cwd=tmp_path)
    result = run_cli("mergekit-expo", "card", "./out", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "alhpa" in line]
    assert len(warned) == 1 and "did you mean 'alpha'" in warned[0] and "mergekit ignored it" in warned[0]
    assert "**α**: 0.3" in (tmp_path / "out" / "README.md").read_text()  # what was merged


@pytest.mark.parametrize("edit", [
    ("# out\n", "# My model\n"),  # the title
    ("* ./models/aligned\n", "* ./models/aligned\n\nTrained on my own data.\n"),  # after the inputs
    ("as a base.", "as a base. It is my best model so far."),  # a sentence after the base line
    ("tags:\n", "license: mit\ntags:\n"),  # a front-matter key
    ("tags:\n- mergekit\n- merge\n", "tags:\n- mergekit\n- merge\n- mine\n"),  # a tag
])
def test_card_never_replaces_an_edited_mergekit_card(plain_output, tmp_path, monkeypatch, edit):
    root = tmp_path / "ws"
    shutil.copytree(plain_output, root, symlinks=True)
    monkeypatch.chdir(root)
    readme = root / "out" / "README.md"
    text = readme.read_text()
    assert edit[0] in text
    readme.write_text(text.replace(*edit, 1))
    before = snapshot(root / "out")
    assert "README.md was not written by mergekit or mergekit-expo (or was edited since" in refused(
        "card", "./out", "--overwrite")
    assert snapshot(root / "out") == before


def test_card_refuses_folders_that_are_not_expo_outputs(plain_output, pair, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    linear = {"merge_method": "linear", "models": [{"model": str(pair[0]), "parameters": {"weight": 0.5}},
                                                   {"model": str(pair[1]), "parameters": {"weight": 0.5}}]}
    ok("run", write_yaml(tmp_path / "linear.yml", linear), "./linear")
    user = tmp_path / "mine"
    shutil.copytree(plain_output / "out", user)
    (user / "README.md").write_text("# My model\n\nMy own words.\n")
    cases = [("./linear", "is a linear merge, not an expo one"),
             (str(pair[0]), "is not a mergekit merge output (no mergekit_config.yml)"),
             ("./mine", "was not written by mergekit or mergekit-expo")]
    for folder, problem in cases:
        before = snapshot(Path(folder))
        for extra in ([], ["--overwrite"]):
            assert problem in refused("card", folder, *extra)
            assert snapshot(Path(folder)) == before


def test_card_attaches_a_search_of_the_same_models_only(plain_output, pair_factory, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(plain_output, root, symlinks=True)
    monkeypatch.chdir(root)
    data = root / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "w1 w2", "chosen": "w3", "rejected": "w4 w5"}) + "\n")
    ok("search", "./models/sft", "./models/aligned", "--data", data, "--alphas", "0,0.3", "--out", "./s")
    ok("card", "./out", "--search", "./s", "--overwrite")
    text = (root / "out" / "README.md").read_text()
    assert "## How α was chosen" in text and "data: `prefs.jsonl`, 1 row" in text
    assert (root / "out" / "score_vs_alpha.png").is_file()

    other = pair_factory(seed=7)
    ok("search", str(other[0]), "./models/aligned", "--data", data, "--alphas", "0", "--out", "./other")
    before = snapshot(root / "out")
    assert "scored the SFT model" in refused("card", "./out", "--search", "./other")
    assert snapshot(root / "out") == before


def test_multi_output_card_names_the_expo_stage_lineage(models_dir, monkeypatch):
    """Plain mergekit-multi writes the final stage's card, which cannot know the expo
    stage's inputs; `card --multi-config` writes them."""
    monkeypatch.chdir(models_dir)
    shutil.copy(CONFIGS / "expo-then-linear.multi.yml", models_dir / "multi.yml")
    run_cli("mergekit-multi", "multi.yml", "--intermediate-dir", "./stages", "--out-path", "./out", cwd=models_dir)
    out = models_dir / "out"
    assert "./models/sft" not in (out / "README.md").read_text()
    assert "pass --multi-config PIPELINE.yml" in refused("card", "./out")
    # A pipeline is evidence for an output only if its final stage is what wrote it.
    (models_dir / "heavier.yml").write_text((models_dir / "multi.yml").read_text().replace("0.7", "0.6"))
    linear = {"merge_method": "linear", "dtype": "bfloat16",
              "models": [{"model": "./models/aligned", "parameters": {"weight": 0.5}},
                         {"model": "./models/other", "parameters": {"weight": 0.5}}]}
    run_cli("mergekit-yaml", write_yaml(models_dir / "linear.yml", linear), "./lin", cwd=models_dir)
    for folder, pipeline, why in [
            ("./out", "heavier.yml", ": weight of ./stages/expo-stage is 0.6 in heavier.yml, 0.7 in "
                                     "./out/mergekit_config.yml: pass the pipeline that wrote it"),
            ("./lin", "multi.yml", " (its config uses no output of stage `expo-stage`)")]:
        before = snapshot(models_dir / folder)
        line = refused("card", folder, "--multi-config", pipeline, "--overwrite")
        assert f"was not written by the final stage of {pipeline}{why}" in line
        assert snapshot(models_dir / folder) == before
    ok("card", "./out", "--multi-config", "multi.yml", "--overwrite")
    text = ModelCard.load(out / "README.md").text
    assert "### ExPO stage `expo-stage`" in text
    assert "mergekit's `base_model`): `./models/sft`" in text and "SFT model): `./models/aligned`" in text
    assert "the final stage: [Linear](" in text and "of stage `expo-stage`, `./models/other`" in text
    assert f"```yaml\n{(models_dir / 'multi.yml').read_text().rstrip()}\n```" in text

    from mergekit_expo.card import card_files

    hub_pipeline = (models_dir / "multi.yml").read_text().replace("./models/", "org/")
    metadata = yaml.safe_load(card_files(out, "", pipeline=hub_pipeline)["README.md"].decode().split("---\n")[1])
    assert metadata["base_model"] == ["org/sft", "org/aligned", "org/other"]
    assert metadata["base_model_relation"] == "merge"



def test_multi_card_checks_every_stage_against_what_was_merged(models_dir, monkeypatch):
    """The expo stage is an earlier one: its α is read from its own folder under
    --intermediate-dir, never taken from the pipeline on trust."""
    monkeypatch.chdir(models_dir)
    shutil.copy(CONFIGS / "expo-then-linear.multi.yml", models_dir / "multi.yml")
    run_cli("mergekit-multi", "multi.yml", "--intermediate-dir", "./stages", "--out-path", "./out", cwd=models_dir)
    (models_dir / "wrong.yml").write_text((models_dir / "multi.yml").read_text().replace("alpha: 0.3", "alpha: 0.5"))
    out = models_dir / "out"
    ok("card", "./out", "--multi-config", "multi.yml", "--overwrite")  # the card is now the command's own
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        line = refused("card", "./out", "--multi-config", "wrong.yml", *extra)
        assert line == ("Error: stage `expo-stage` of wrong.yml is not what was merged into ./stages/expo-stage: "
                        "alpha of ./models/aligned is 0.5 in wrong.yml, 0.3 in "
                        "./stages/expo-stage/mergekit_config.yml (mergekit-multi keeps a stage folder that holds "
                        "a model: rerun it with --no-lazy, or pass the pipeline that wrote it)")
        assert snapshot(out) == before

    # A stage merged again since (now as wrong.yml says), or whose config or whole folder is gone,
    # is named as unchecked, its α as configured.
    stages = models_dir / "stages" / "expo-stage"
    for gone, why in [(None, "./stages/expo-stage was merged again after ./out, so it no longer shows what "
                             "went into ./out"),
                      (stages / "mergekit_config.yml", "./stages/expo-stage/mergekit_config.yml is not there"),
                      (stages, "./stages/expo-stage is not there")]:
        if gone is None:
            run_cli("mergekit-multi", "wrong.yml", "--intermediate-dir", "./stages", "--out-path", "./out2",
                    "--no-lazy", cwd=models_dir)
        elif gone.is_dir():
            shutil.rmtree(gone)
        else:
            gone.unlink()
        result = run_cli("mergekit-expo", "card", "./out", "--multi-config", "wrong.yml", cwd=models_dir)
        assert f"stage `expo-stage` could not be checked against what was merged: {why}" in result.stderr
        text = ModelCard.load(out / "README.md").text
        assert f"This stage was **not checked** against what was merged: {why}" in text
        assert "- **α** (as configured, not checked): 0.5" in text and "- **α**: " not in text
        assert "stage `expo-stage`: ExPO (as configured: **not checked** against what was merged)" in text
        assert "one of whose stages is ExPO as its pipeline configures it (not checked" in text


BLEND = {"name": "blend", "merge_method": "slerp", "base_model": "./models/aligned",
         "models": [{"model": "./models/aligned"}, {"model": "./models/other"}], "parameters": {"t": 0.25},
         "dtype": "float32"}


@pytest.mark.parametrize("name", [None, "final"])
def test_multi_card_plans_alpha_of_a_stage_that_reads_an_earlier_one(models_dir, monkeypatch, name):
    """The expo stage's aligned model is stage `blend`: its α is planned from ./stages/blend, where
    mergekit-multi wrote it, not looked up on the Hub; a named final stage is ./stages/NAME."""
    monkeypatch.chdir(models_dir)
    expo_stage = {**({"name": name} if name else {}), "merge_method": "expo", "base_model": "./models/sft",
                  "models": [{"model": "blend", "parameters": {"alpha": [0.2, 0.6]}}], "dtype": "float32"}
    write_yaml(models_dir / "multi.yml", [BLEND, expo_stage])
    out = f"./stages/{name}" if name else "./out"
    run_cli("mergekit-multi", "multi.yml", "--intermediate-dir", "./stages", *([] if name else ["--out-path", out]),
            cwd=models_dir)
    card = run_cli("mergekit-expo", "card", out, "--multi-config", "multi.yml", "--overwrite", cwd=models_dir)
    assert "WARNING" not in card.stderr, card.stderr
    text = ModelCard.load(Path(out) / "README.md").text
    assert f"### ExPO {f'stage `{name}`' if name else '(the final stage)'}\n" in text
    assert ("- **α**:\n  - `model.embed_tokens`, `model.norm`, `lm_head`: 0.2\n"
            "  - every tensor of the layers: 0.2 at layer 0; 0.6 at layer 1\n") in text

    # Gone, the stage's folder is named as what could not be read (not "run card from the folder
    # the merge ran in", where it already runs).
    shutil.rmtree(models_dir / "stages" / "blend")
    card = run_cli("mergekit-expo", "card", out, "--multi-config", "multi.yml", "--overwrite", cwd=models_dir)
    assert ("α is described as configured, not per tensor: mergekit cannot read ./stages/blend (no such folder "
            "here); make it readable here (restore the folder, download the Hub id) and run card again"
            in card.stderr), card.stderr
    assert "ran in" not in card.stderr.replace("mergekit-multi was", "")
    assert "- **α**: as configured below (not resolved per tensor" in ModelCard.load(Path(out) / "README.md").text


def test_multi_card_with_two_expo_stages_names_both(models_dir, monkeypatch):
    monkeypatch.chdir(models_dir)
    stages = [{"name": f"expo-{x}", "merge_method": "expo", "base_model": "./models/sft",
               "models": [{"model": aligned, "parameters": {"alpha": 0.3}}], "dtype": "float32"}
              for x, aligned in (("a", "./models/aligned"), ("b", "./models/other"))]
    final = {"merge_method": "slerp", "base_model": "expo-a", "models": [{"model": "expo-a"}, {"model": "expo-b"}],
             "parameters": {"t": 0.5}, "dtype": "float32"}
    pipeline = yaml.safe_dump_all([*stages, final], sort_keys=False)
    (models_dir / "out").mkdir()
    from mergekit_expo.card import card_files

    def summary(**unchecked):
        text = card_files(models_dir / "out", "", pipeline=pipeline, unchecked=unchecked)["README.md"].decode()
        return text.split("\n# out\n\n", 1)[1].split("\n", 1)[0]

    each = {x: f"the aligned model `./models/{aligned}` extrapolated away from its SFT model `./models/sft`"
            for x, aligned in (("a", "aligned"), ("b", "other"))}
    assert summary() == ("A merge made with [mergekit](https://github.com/arcee-ai/mergekit)'s `mergekit-multi`, "
                         f"two of whose stages are ExPO: stage `expo-a`: {each['a']}; stage `expo-b`: {each['b']}.")
    assert summary(**{"expo-b": "gone"}).endswith(
        f"stage `expo-a`: {each['a']}; stage `expo-b` as its pipeline configures it (not checked against what "
        f"was merged): {each['b']}.")


def test_card_without_mergekit_names_what_to_install(plain_output, tmp_path, monkeypatch):
    import sys

    root = tmp_path / "ws"
    shutil.copytree(plain_output, root, symlinks=True)
    monkeypatch.chdir(root)
    for name in [name for name in sys.modules if name.split(".")[0] == "mergekit"]:
        monkeypatch.setitem(sys.modules, name, None)  # Python's own "not installed"
    before = snapshot(root / "out")
    assert refused("card", "./out", "--overwrite") == ("Error: mergekit-expo card needs mergekit, which is "
                                                       "not installed: pip install 'mergekit>=0.1.4,<0.2'")
    assert snapshot(root / "out") == before


def test_card_from_another_folder_warns_that_relative_paths_become_hub_ids(models_dir):
    (models_dir / "llama").symlink_to(models_dir / "models", target_is_directory=True)
    write_yaml(models_dir / "relative.yml", expo_config("llama/sft", "llama/aligned"))
    run_cli("mergekit-expo", "run", "relative.yml", "./out", cwd=models_dir)
    (models_dir / "elsewhere").mkdir()
    warned = "no folder here and not in the Hugging Face cache"
    elsewhere = run_cli("mergekit-expo", "card", "../out", cwd=models_dir / "elsewhere")
    lines = [line for line in elsewhere.stderr.splitlines() if warned in line]
    assert len(lines) == 1, elsewhere.stderr
    assert lines[0].endswith("llama/sft, llama/aligned: no folder here and not in the Hugging Face cache, so "
                             "the card names them as Hub ids; if they are local folders, run card from the "
                             "folder the merge ran in")
    assert front_matter(models_dir / "out" / "README.md")["base_model"] == ["llama/sft", "llama/aligned"]
    there = run_cli("mergekit-expo", "card", "./out", cwd=models_dir)
    assert warned not in there.stderr
    assert "base_model" not in front_matter(models_dir / "out" / "README.md")


def test_card_names_a_tie_only_among_the_candidates_the_pick_was_chosen_from(tmp_path):
    """Accuracies tie often. In a full search the mean margin breaks the tie and the card says so;
    in a race the α retired within the tolerance were not candidates for the pick, so no tie is
    claimed (the race's leader is the pick whatever its margin)."""
    from mergekit_expo.card.lineage import lineage_of_config
    from mergekit_expo.card.search_section import choice_words
    from mergekit_expo.search.results import AlphaResult, SearchResults

    stage = lineage_of_config(yaml.safe_dump(expo_config("org/sft", "org/aligned", 0.0))).final
    settings = {"sft": "org/sft", "aligned": "org/aligned", "scorer": "preference", "dtype": "float32"}
    margins = {0.0: -0.003, 1.0: 0.002, 2.0: 0.014}

    def rows(retired):
        return [AlphaResult(alpha=a, score=0.4375, low=0.2, high=0.6, n=24, seconds=1.0,
                            extra={"mean_margin": m}, retired_in=1 if a in retired else None)
                for a, m in margins.items()]

    full = SearchResults(tmp_path, settings, rows(retired=()))
    assert full.best().alpha == 2.0
    assert ("It ties with α = 0, 1 on the score; the larger mean log-likelihood margin (chosen over "
            "rejected) breaks the tie.") in choice_words(full, stage)
    raced = SearchResults(tmp_path, settings, rows(retired=(1.0, 2.0)))
    assert raced.best().alpha == 0.0
    assert not any("ties with" in words or "breaks the tie" in words for words in choice_words(raced, stage))


def test_search_section_names_each_scorer_kind(tmp_path):
    """Reward-model and lm-eval searches: the metric, the sampling, the examples and skipped rows."""
    from mergekit_expo.card.lineage import lineage_of_config
    from mergekit_expo.card.search_section import search_section
    from mergekit_expo.search.results import AlphaResult, SearchResults

    stage = lineage_of_config(yaml.safe_dump(expo_config("org/sft", "org/aligned", 0.5))).final
    sampling = {"max_new_tokens": 128, "sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50,
                "presence_penalty": 0.1, "frequency_penalty": 0.1, "seed": 3}
    settings = {"sft": "org/sft", "aligned": "org/aligned", "scorer": "reward-model", "dtype": "bfloat16",
                "engine": "vllm", "reward_model": "/data/rm/my-reward-model", "sampling": sampling}
    rows = [AlphaResult(alpha=a, score=s, low=s - 0.1, high=s + 0.1, n=40, seconds=1.0, extra={"skipped": 2})
            for a, s in ((0.0, 1.0), (0.5, 1.5))]
    section = search_section(SearchResults(tmp_path, settings, rows, about={"data_file": "/x/dev.jsonl"}),
                             stage, plot=None)
    facts = "\n".join(section["facts"])
    assert ("mean reward of the model's answers (sampled at temperature 0.7, top-p 0.9, top-k 50, seed 3, "
            "up to 128 new tokens) under `my-reward-model`") in facts
    assert "data: `dev.jsonl`, 42 rows (2 skipped: longer than the model's context)" in facts
    assert "engine: vLLM (`--engine vllm`), dtype: bfloat16" in facts
    assert "every candidate scored on every dev row (`--strategy full`)" in facts  # which strategy ran
    assert section["choice"][0] == "α = 0.5 has the highest score (1.5) of the 2 α values searched."
    assert len(section["choice"]) == 1  # intervals apart, α as configured: nothing to add

    settings.update(scorer="lm-eval:arc_easy", engine="hf", scorer_settings={
        "tasks": ["arc_easy"], "metrics": {"arc_easy": "acc_norm,none"}, "limit": 100, "num_fewshot": 0})
    section = search_section(SearchResults(tmp_path, settings, rows), stage, plot=None)
    facts = "\n".join(section["facts"])
    assert ("lm-evaluation-harness, mean of task metric arc_easy (acc_norm,none), first 100 examples per task, "
            "0-shot") in facts
    assert "data: the tasks' own, 40 examples" in facts


def test_a_negated_zero_reads_as_zero():
    # A guard that negates a lower-is-better metric gives -0.0 for a perfect score.
    from mergekit_expo.card.search_section import _number

    assert _number(-0.0) == "0" and _number(-0.5) == "-0.5" and _number(None) == "–"


def test_a_raced_card_compares_each_guard_on_its_own_rows_and_says_when_the_guard_chose(tmp_path):
    """α = 2 stopped early: its guard is compared with α = 0's on its 32 rows (0.61), not with
    α = 0's mean on 96; the race's leader, α = 1, is excluded, so the pick is the best allowed α
    scored on the most rows, and card and summary say so instead of calling it the race's leader."""
    from mergekit_expo.card.lineage import lineage_of_config
    from mergekit_expo.card.search_section import choice_words
    from mergekit_expo.search.results import AlphaResult, SearchResults

    stage = lineage_of_config(yaml.safe_dump(expo_config("org/sft", "org/aligned", 0.0))).final
    settings = {"sft": "org/sft", "aligned": "org/aligned", "scorer": "preference", "dtype": "float32",
                "guard": "preference", "strategy": "race"}

    def row(alpha, score, guard, n, reference=None, retired_in=None):
        return AlphaResult(alpha=alpha, score=score, low=score - 0.1, high=score + 0.1, n=n, seconds=1.0,
                           guard=guard, guard_reference=reference, retired_in=retired_in)

    rows = [row(0.0, 0.50, 0.60, 96, retired_in=3), row(1.0, 0.70, 0.40, 96),
            row(2.0, 0.45, 0.58, 32, reference=0.61, retired_in=1)]
    results = SearchResults(tmp_path, settings, rows, max_drop=0.05)
    results.race = {"strategy": "race", "rows": 160, "ended": "every other candidate is below alpha=1 or "
                    "within the tolerance of it", "survivors": ["alpha=1"]}
    assert results.best().alpha == 0.0
    words = " ".join(choice_words(results, stage))
    assert ("The guard excludes every α the strategy kept to the end, so the pick is the best of those it "
            "allows that were scored on the most rows (96).") in words
    assert "No α > 0 that the guard allows scored above the aligned model itself" in words
    assert ("Excluded: α = 1, whose guard fell more than 0.05 below its 0.6 at α = 0 (to 0.4).") in words
    results.max_drop = 0.02
    assert ("Excluded: α = 1, 2, whose guard fell more than 0.02 below α = 0's on the rows each was scored on "
            "(1: 0.4 against 0.6; 2: 0.58 against 0.61).") in " ".join(choice_words(results, stage))
    summary = results.summary()
    assert "best alpha = 0 (score 0.5 on 96 rows): the guard excludes every alpha the strategy kept" in summary
    assert "the race's leader" in [line for line in summary.splitlines() if line.strip().startswith("1 ")][0]


def test_a_full_search_whose_guard_allows_only_alpha_0_says_so_once(tmp_path):
    from mergekit_expo.card.lineage import lineage_of_config
    from mergekit_expo.card.search_section import choice_words
    from mergekit_expo.search.results import AlphaResult, SearchResults

    stage = lineage_of_config(yaml.safe_dump(expo_config("org/sft", "org/aligned", 0.0))).final
    settings = {"sft": "org/sft", "aligned": "org/aligned", "scorer": "preference", "guard": "preference"}
    rows = [AlphaResult(alpha=a, score=s, low=s - 0.1, high=s + 0.1, n=64, seconds=1.0, guard=g)
            for a, s, g in ((0.0, 0.5, 0.6), (0.5, 0.7, 0.4), (1.0, 0.8, 0.3))]
    words = choice_words(SearchResults(tmp_path, settings, rows, max_drop=0.05), stage)
    assert words[0] == "α = 0 is the only one of the α values searched that the guard allows (score 0.5)."
    assert not any("No α > 0" in line or "excludes every α > 0" in line for line in words)
