"""``mergekit-expo run``: mergekit's own ``run_merge``, with checks first and atomic output."""

import logging
from pathlib import Path

import click
import yaml
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_expo.atomic_output import check_output_path, staged_folder
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.preflight import check_model_folder, check_pair, is_local_reference

LOG = logging.getLogger("mergekit_expo")


@click.command("run", cls=PrettyPrintHelp)
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace OUT_PATH if it already holds a model")
@add_merge_options
@reports_errors
def run_command(merge_options: MergeOptions, config_file: str, out_path: str, overwrite: bool):
    """Merge like `mergekit-yaml CONFIG_FILE OUT_PATH`, but OUT_PATH only ever holds a
    finished model: the merge is written beside it and moved into place on success."""
    merge_options.apply_global_options()
    run_config_file(config_file, out_path, merge_options, overwrite=overwrite)


def run_config_file(config_file, out_path, options, *, overwrite=False) -> Path:
    from mergekit.merge import run_merge

    source, config = load_merge_config(config_file)
    check_device(options)
    if config.merge_method == "expo":
        check_expo_inputs(config)
    out = check_output_path(out_path, overwrite)
    with staged_folder(out) as staging:
        if options.lora_merge_cache is None and any(m.lora for m in config.referenced_models()):
            # mergekit needs a folder for `model: ./sft+./adapter` merges; ours is temporary.
            options = options.model_copy(update={"lora_merge_cache": str(staging.parent / "lora-cache")})
        run_merge(config, str(staging), options=options, config_source=source)
    LOG.info("merged model written to %s", out)
    return out


def load_merge_config(config_file: str):
    """Return (yaml text, MergeConfiguration), or raise ExpoConfigError in one line."""
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    path = Path(config_file)
    if not path.is_file():
        raise ExpoConfigError(f"config file {config_file} does not exist")
    source = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(source)  # never yaml.load: configs must not run code
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ExpoConfigError(f"{config_file} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(data, dict):
        raise ExpoConfigError(f"{config_file} must be a YAML mapping with merge_method: and models:")
    try:
        return source, MergeConfiguration.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ExpoConfigError(f"{config_file}: {where}: {first['msg']}") from None
    except RuntimeError as error:  # mergekit's own structural validators
        raise ExpoConfigError(f"{config_file}: {error}") from None


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
    from mergekit_expo.method import MISSING_BASE

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
