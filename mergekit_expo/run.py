"""``mergekit-expo run``: mergekit's own ``run_merge``, with checks first and atomic output."""

import logging
import re
import sys
from pathlib import Path

import click
import torch
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_expo.atomic_output import staged_output
from mergekit_expo.card import check_card_inputs, write_card
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.contract import MISSING_BASE
from mergekit_expo.devices import device_problem
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hub import is_hub_id
from mergekit_expo.merge_config import check_dtype, load_merge_config, reads_of
from mergekit_expo.output_guard import Output, check_no_overlap, check_output
from mergekit_expo.preflight import check_input_folders, check_model_folder, has_tokenizer
from mergekit_expo.trajectory.preflight import check_trajectory_inputs
from mergekit_expo.trajectory.steps import NAME as TRAJECTORY

LOG = logging.getLogger("mergekit_expo")
# mergekit's cache entries: f"{basename}_{crc32}_{basename}_{crc32}" (ModelPath._unique_id)
CACHE_ENTRY = re.compile(r".+_\d+_.+_\d+")


@click.command("run", cls=PrettyPrintHelp)
@click.argument("config_file", type=click.Path())
@click.argument("out_path", type=click.Path())
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_PATH if it holds a model this command wrote, unchanged (never an input)")
@add_merge_options
@reports_errors
def run_command(merge_options: MergeOptions, config_file: str, out_path: str, overwrite: bool):
    """Merge like `mergekit-yaml CONFIG_FILE OUT_PATH`, but OUT_PATH only ever holds a
    finished model: the merge is written beside it and moved into place on success."""
    merge_options.apply_global_options()
    run_config_file(config_file, out_path, bars_on_terminal_only(merge_options), overwrite=overwrite)


def bars_on_terminal_only(options):
    """mergekit's progress bars redraw their line (a carriage return) many times a second:
    in a log file or a pipe that is thousands of lines, so they are drawn on a terminal only
    (as tqdm's own ``disable=None`` does)."""
    if options.quiet or sys.stderr.isatty():
        return options
    return options.model_copy(update={"quiet": True})


def run_config_file(config_file, out_path, options, *, overwrite=False, search=None,
                    command="mergekit-expo run", checked: Output = None) -> Path:
    """Merge ``config_file`` into ``out_path``; return the absolute output folder.

    ``search``: the α search whose choice it is, shown in the model card.
    ``checked``: the same output path as checked when an earlier step began (search's
    --write-best): --overwrite then replaces only the output that was there then.
    """
    from mergekit.merge import run_merge  # loads transformers: only when a merge runs

    hub_ids = {}
    source, config = load_merge_config(config_file, hub_ids)
    # Before anything is read: the output may not touch an input, or anything not ours.
    reads = reads_of(config, config_file)
    target = check_output(out_path, reads=reads, kind="model", command=command, overwrite=overwrite)
    if checked is not None and checked.replaces != target.replaces:
        raise ExpoConfigError(
            f"{out_path} changed since the command started: it was left as it is; check what "
            "is there, then rerun"
        )
    check_lora_merge_cache(options.lora_merge_cache, target, reads)
    check_dtype("--lora-merge-dtype", options.lora_merge_dtype)
    check_device(options)
    if config.merge_method == "expo":
        check_expo_inputs(config)
    elif config.merge_method == TRAJECTORY:
        check_trajectory_inputs(config)
    check_card_inputs(source, hub_ids=hub_ids, search=search)
    options = tokenizer_options(options, config)
    with staged_output(target) as staging:
        if any(m.lora for m in config.referenced_models()):
            options = lora_options(options, config, staging)
        run_merge(config, str(staging), options=options, config_source=source)
        if options.write_model_card:
            write_card(staging, source, hub_ids=hub_ids, search=search)
    LOG.info("merged model written to %s", target.path)
    return target.path


def check_lora_merge_cache(cache, target: Output, reads) -> None:
    """--lora-merge-cache is written to: never an input or the output, and never a
    folder holding anything but mergekit's cached merges (``<model>_<crc>_<adapter>_<crc>``)."""
    if cache is None:
        return
    folder = Path(cache)
    check_no_overlap(folder.absolute(), cache, [*reads, ("the output", target.given)],
                     what="--lora-merge-cache",
                     fix="give a cache folder outside every input and the output")
    if folder.exists() and not folder.is_dir():
        raise ExpoConfigError(f"--lora-merge-cache {cache} is a file: give a folder")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir()
                         if not (p.is_dir() and not p.is_symlink() and CACHE_ENTRY.fullmatch(p.name)))
        if foreign:
            raise ExpoConfigError(
                f"--lora-merge-cache {cache} holds {foreign[0]}, which is not a merged LoRA model "
                "mergekit cached there: give a new or empty folder, or one used only as this cache"
            )


def tokenizer_options(options, config):
    """Where mergekit would copy the tokenizer from a folder that has none, it would
    print a 20-line traceback and write a model without one: say so in one line."""
    if config.tokenizer is not None or config.tokenizer_source is not None or not options.copy_tokenizer:
        return options
    donor = config.base_model or config.referenced_models()[0]
    path = donor.model.path
    if donor.lora is not None or is_hub_id(path) or has_tokenizer(path):
        return options
    LOG.warning("%s has no tokenizer files (tokenizer.json, tokenizer.model, ...): the merged model "
                "is written without a tokenizer; copy the tokenizer files into it before loading it",
                path)
    return options.model_copy(update={"copy_tokenizer": False})


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
    problem = device_problem(device, fixes="cpu, cuda or cuda:N")
    if problem:
        given = "--cuda/--device cuda" if device == "cuda" else f"--device {device}"
        visible = " or check CUDA_VISIBLE_DEVICES" if device.startswith("cuda") else ""
        raise ExpoConfigError(f"{given} was given but {problem}: drop the option{visible}")
    if torch.cuda.is_available():
        return
    if getattr(options, "multi_gpu", False):  # mergekit's executor fails on it with an AttributeError
        raise ExpoConfigError("--multi-gpu was given but no CUDA device is visible: drop the option or "
                              "check CUDA_VISIBLE_DEVICES")


def check_expo_inputs(config) -> None:
    if config.base_model is None:
        raise ExpoConfigError(MISSING_BASE)
    sft = config.base_model
    paired = check_input_folders(config, [model for model in config.referenced_models() if model != sft],
                                 "aligned")
    if not paired and not is_hub_id(sft.model.path):  # no aligned folder was checked against it
        check_model_folder(sft.model.path, "SFT (base_model)")
