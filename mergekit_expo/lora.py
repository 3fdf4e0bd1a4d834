"""ExPO for LoRA adapters: a new adapter whose update is (1 + α) times the original.

With θ_aligned = θ_sft + ΔW and ΔW = scale·B·A, ExPO gives θ_sft + (1+α)·ΔW
(the ExPO formula with θ_aligned − θ_sft = ΔW). We scale ``lora_B`` (weight and bias):
it is exact for every scaling rule (lora_alpha/r, rslora's lora_alpha/√r,
alpha_pattern, rank_pattern) without touching the config, so the new adapter keeps
rank, targets and config and loads with ``PeftModel.from_pretrained`` as before.
"""

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Dict, Optional

import click
import torch
import yaml
from safetensors.torch import load_file, save_file

from mergekit_expo import hub
from mergekit_expo.alpha import DEFAULT_ALPHA, checked_alpha
from mergekit_expo.atomic_output import staged_output
from mergekit_expo.checkpoint import read_tensor, shard_of
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.errors import ExpoInputError
from mergekit_expo.manifest import MANIFEST
from mergekit_expo.numerics import extrapolate_tensor
from mergekit_expo.output_guard import check_output
from mergekit_expo.preflight import check_model_folder

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
WEIGHT_FILES = {ADAPTER_WEIGHTS, "adapter_model.bin"}
README, ORIGINAL_README = "README.md", "ORIGINAL_README.md"
LOG = logging.getLogger("mergekit_expo")


def is_lora_update(name: str) -> bool:
    """B factors of ΔW = scale·B·A (linear and embedding LoRA)."""
    return ".lora_B." in name or name.endswith(".lora_embedding_B")


def is_unchanged(name: str) -> bool:
    """A factors, and base weights peft saves alongside (save_embedding_layers)."""
    return ".lora_A." in name or name.endswith(".lora_embedding_A") or ".base_layer." in name


def extrapolate_adapter(
    adapter_dir: str,
    out_dir: str,
    alpha: float = DEFAULT_ALPHA,
    *,
    base: Optional[str] = None,
    overwrite: bool = False,
) -> Path:
    """Write the ExPO adapter of ``adapter_dir`` to ``out_dir`` and return its path.

    ``base`` (the SFT checkpoint folder) is needed only when the adapter carries
    full weights (``modules_to_save``), which are extrapolated against it.
    ``overwrite`` replaces an adapter this function wrote at ``out_dir`` (nothing else).

    >>> extrapolate_adapter("./dpo-lora", "./dpo-lora-expo", alpha=0.3)
    """
    alpha = checked_alpha(alpha)
    source = Path(adapter_dir)
    target = check_output(out_dir, reads=[("the adapter", adapter_dir), ("the base model", base)],
                          kind="adapter", command="mergekit-expo lora", overwrite=overwrite)
    given_base = base
    base = hub.resolve(base, "base model")
    config = read_adapter_config(source)  # validates: a LoRA we can scale exactly
    tensors = load_file(source / ADAPTER_WEIGHTS)
    full_weights = [n for n in tensors if not is_lora_update(n) and not is_unchanged(n)]
    unsupported = [n for n in full_weights if "lora_" in n or "trainable_tokens" in n]
    if unsupported:
        raise ExpoInputError(
            f"{source} holds {unsupported[0]}, which a scaled adapter cannot represent "
            "exactly: merge through mergekit instead (model: ./sft+./adapter with "
            "merge_method: expo, base_model: ./sft)"
        )
    if full_weights and base is None:
        raise ExpoInputError(
            f"{source} carries full weights ({', '.join(_short(n) for n in full_weights[:3])}"
            f"{', ...' if len(full_weights) > 3 else ''}, from modules_to_save): pass "
            "--base with the SFT checkpoint folder to extrapolate them"
        )
    if full_weights:
        _warn_other_base(config, given_base, base)
    base_tensors = _base_tensors(Path(base), full_weights) if full_weights else {}

    result = {}
    for name, tensor in tensors.items():
        if is_lora_update(name):
            result[name] = (tensor.double() * (1 + alpha)).to(tensor.dtype)
        elif name in base_tensors:
            result[name] = _extrapolate_full(name, base_tensors[name], tensor, alpha)
        else:
            result[name] = tensor

    card = adapter_card(source, config, alpha, given_base if full_weights else None, target.path.name,
                        original=(source / README).is_file())
    _write_adapter(target, source, result, card, alpha)
    return target.path


def _write_adapter(target, source: Path, tensors: Dict[str, torch.Tensor], card: str, alpha: float) -> None:
    """The new adapter, published at once: the source's files but its weights and card."""
    with staged_output(target) as staging:
        staging.mkdir()
        for file in source.iterdir():
            if file.is_file() and file.name not in WEIGHT_FILES and file.name not in (MANIFEST, README):
                shutil.copy2(file, staging / file.name)
        if (source / README).is_file():  # the trained adapter's card, kept beside the new one's
            shutil.copy2(source / README, staging / ORIGINAL_README)
        (staging / README).write_text(card, encoding="utf-8")
        metadata = {"format": "pt", "expo_alpha": repr(alpha), "expo_source": str(source)}
        save_file(tensors, staging / ADAPTER_WEIGHTS, metadata=metadata)


def _warn_other_base(config: dict, given: Optional[str], resolved: Optional[str]) -> None:
    """One line when --base is not the model the adapter records as its base (which may be a
    Hub id where --base is its local copy: a line to check, not a refusal)."""
    recorded = config.get("base_model_name_or_path")
    if not recorded or given is None or recorded == given:
        return
    if os.path.exists(recorded) and os.path.realpath(recorded) == os.path.realpath(resolved):
        return
    LOG.warning("the adapter records its base model as %s, and --base is %s: its modules_to_save weights "
                "are extrapolated against --base, so check that it is the model the adapter was trained on",
                recorded, given)


def adapter_card(source: Path, config: dict, alpha: float, base: Optional[str], name: str, *,
                 original: bool) -> str:
    """The new adapter's README: what it is, made from what, and how to load it."""
    recorded = config.get("base_model_name_or_path")
    front = {"library_name": "peft", "tags": ["expo", "lora", "mergekit-expo"]}
    if recorded and hub.is_hub_id(recorded):  # the Hub takes only a model id as base_model
        front["base_model"] = recorded
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", "",
             "The ExPO version ([model extrapolation](https://arxiv.org/abs/2404.16792)) of the LoRA "
             f"adapter `{source.name}`, at α = {alpha:g}: its update is 1 + α = {1 + alpha:g} times the "
             "trained adapter's (θ = θ_base + (1 + α)·ΔW, written by scaling `lora_B`); rank, targets and "
             "`adapter_config.json` are the trained adapter's."]
    if base:
        lines += ["", f"Its `modules_to_save` weights are extrapolated against `{base}`: "
                      "θ_trained + α·(θ_trained − θ_base)."]
    lines += ["", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "",
              f"model = AutoModelForCausalLM.from_pretrained({recorded or 'BASE_MODEL'!r})",
              f"model = PeftModel.from_pretrained(model, {name!r})", "```"]
    if original:
        lines += ["", f"The trained adapter's own card is kept as `{ORIGINAL_README}`."]
    return "\n".join(lines) + "\n"


def read_adapter_config(source: Path) -> dict:
    """The adapter's config, after checking it is a LoRA we can scale exactly."""
    if not source.is_dir():
        raise ExpoInputError(f"adapter folder {source} does not exist: check the path")
    if not (source / ADAPTER_CONFIG).is_file():
        raise ExpoInputError(
            f"{source} is not a PEFT adapter folder (no {ADAPTER_CONFIG}): point to the "
            "folder written by PeftModel.save_pretrained"
        )
    try:
        config = json.loads((source / ADAPTER_CONFIG).read_text())
    except ValueError:
        raise ExpoInputError(f"{source / ADAPTER_CONFIG} is not valid JSON") from None
    kind = config.get("peft_type")
    if kind != "LORA":
        raise ExpoInputError(
            f"{source} is a {kind} adapter; only LoRA adapters can be extrapolated by "
            "scaling: merge it into a full checkpoint and use merge_method: expo"
        )
    if config.get("use_dora"):
        raise ExpoInputError(
            f"{source} is a DoRA adapter: its magnitude vectors make the update "
            "non-linear in B, so no scaled adapter is exact; merge through mergekit "
            "instead (model: ./sft+./adapter, merge_method: expo, base_model: ./sft)"
        )
    if not (source / ADAPTER_WEIGHTS).is_file():
        if (source / "adapter_model.bin").is_file():
            raise ExpoInputError(
                f"{source} has only a pickled adapter_model.bin, which is not loaded for "
                "safety: re-save it with PeftModel.save_pretrained(safe_serialization=True)"
            )
        raise ExpoInputError(f"{source} has no {ADAPTER_WEIGHTS}")
    return config


def _short(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def _base_tensors(base: Path, names) -> Dict[str, torch.Tensor]:
    shards = shard_of(check_model_folder(str(base), "base (SFT)"))
    result = {}
    for name in names:
        # modules_to_save weights are saved as base_model.model.<module>.weight, or
        # with a .modules_to_save.<adapter>. infix by some peft versions.
        plain = _short(name).replace(".modules_to_save.default.", ".")
        if plain not in shards:
            raise ExpoInputError(
                f"{_short(name)} is not in the base checkpoint {base}: pass the SFT "
                "model the adapter was trained on"
            )
        result[name] = read_tensor(shards[plain], plain)
    return result


def _extrapolate_full(name, base, trained, alpha) -> torch.Tensor:
    if base.shape[1:] != trained.shape[1:] or base.shape[0] > trained.shape[0]:
        raise ExpoInputError(
            f"{_short(name)} has shape {tuple(trained.shape)} in the adapter and "
            f"{tuple(base.shape)} in the base: pass the SFT model the adapter was trained on"
        )
    rows = base.shape[0]
    result = trained.clone()
    # Rows the base lacks (added tokens) keep the adapter's values, as in the YAML path.
    result[:rows] = extrapolate_tensor(
        base.to(trained.dtype), trained[:rows], alpha, name=_short(name),
        labels=("the base model", "the adapter"),
    )
    return result


@click.command("lora")
@click.argument("adapter_dir", type=click.Path())
@click.argument("out_dir", type=click.Path())
@click.option("--alpha", default=str(DEFAULT_ALPHA), show_default=True,
              help="Extrapolation strength: the new update is (1 + alpha) times the original")
@click.option("--base", type=click.Path(), default=None,
              help="SFT checkpoint folder or Hub id; needed when the adapter has modules_to_save weights")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_DIR if it holds an adapter this command wrote, unchanged (never an input)")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors")
@reports_errors
def lora_command(adapter_dir, out_dir, alpha, base, overwrite, verbose):
    """Write the ExPO version of a LoRA adapter: same rank and targets, update x (1 + alpha)."""
    alpha = checked_alpha(alpha, option="--alpha")
    out = extrapolate_adapter(adapter_dir, out_dir, alpha, base=base, overwrite=overwrite)
    size = (out / ADAPTER_WEIGHTS).stat().st_size
    click.echo(f"ExPO adapter (alpha={alpha:g}) written to {out} ({size / 1e6:.2f} MB)")
