"""``mergekit-expo run``: mergekit's own ``run_merge``, with checks first and atomic output."""

import logging
from pathlib import Path

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_expo.atomic_output import staged_folder
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.merge_config import check_dtype, load_merge_config, reads_of
from mergekit_expo.output_guard import check_output
from mergekit_expo.preflight import check_model_folder, check_pair, is_local_reference

LOG = logging.getLogger("mergekit_expo")


@click.command("run", cls=PrettyPrintHelp)
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path())
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_PATH if it holds a previous mergekit output (never an input)")
@add_merge_options
@reports_errors
def run_command(merge_options: MergeOptions, config_file: str, out_path: str, overwrite: bool):
    """Merge like `mergekit-yaml CONFIG_FILE OUT_PATH`, but OUT_PATH only ever holds a
    finished model: the merge is written beside it and moved into place on success."""
    merge_options.apply_global_options()
    run_config_file(config_file, out_path, merge_options, overwrite=overwrite)


def run_config_file(config_file, out_path, options, *, overwrite=False, search=None) -> Path:
    """Merge ``config_file`` into ``out_path``; ``search``: the α search whose choice it is,
    shown in the model card."""
    from mergekit.merge import run_merge

    from mergekit_expo.card import check_card_inputs, write_card

    hub_ids = {}
    source, config = load_merge_config(config_file, hub_ids)
    # Before anything is read: the output may not touch an input, or anything not ours.
    out = check_output(out_path, reads=reads_of(config, config_file), kind="model",
                       overwrite=overwrite)
    check_dtype("--lora-merge-dtype", options.lora_merge_dtype)
    check_device(options)
    if config.merge_method == "expo":
        check_expo_inputs(config)
    check_card_inputs(source, hub_ids=hub_ids, search=search)
    with staged_folder(out) as staging:
        if any(m.lora for m in config.referenced_models()):
            options = lora_options(options, config, staging)
        run_merge(config, str(staging), options=options, config_source=source)
        if options.write_model_card:
            write_card(staging, source, hub_ids=hub_ids, search=search)
    LOG.info("merged model written to %s", out)
    return out


def lora_options(options, config, staging: Path):
    """mergekit needs a folder for `model: ./sft+./adapter` merges; ours is temporary.

    With ``dtype: float32`` the adapter is merged in float32 too: merged in a bf16
    base's dtype, the route would round θ_aligned to bf16 first (up to 0.3% of a
    tensor's scale away from the scaled adapter).
    """
    update = {}
    if options.lora_merge_cache is None:
        update["lora_merge_cache"] = str(staging.parent / "lora-cache")
    if options.lora_merge_dtype is None and config.dtype in ("float32", "float64"):
        update["lora_merge_dtype"] = config.dtype
    return options.model_copy(update=update)


def check_device(options) -> None:
    device = options.device or "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ExpoConfigError(
                "--cuda/--device cuda was given but no CUDA device is visible: drop the "
                "option or check CUDA_VISIBLE_DEVICES"
            )


def check_expo_inputs(config) -> None:
    from mergekit_expo.contract import MISSING_BASE

    if config.base_model is None:
        raise ExpoConfigError(MISSING_BASE)
    sft = config.base_model
    sft_local = is_local_reference(sft.model.path)
    tokenizer_aligned = bool(config.tokenizer or config.tokenizer_source)
    paired = False
    for model in config.referenced_models():
        path = model.model.path
        if model == sft or not is_local_reference(path):
            continue
        if model.lora is not None:
            check_model_folder(path, "aligned (base of the LoRA)")
        elif sft_local:
            check_pair(sft.model.path, path, tokenizer_aligned=tokenizer_aligned)
            paired = True
        else:
            check_model_folder(path, "aligned")
    if sft_local and not paired:
        check_model_folder(sft.model.path, "SFT (base_model)")
