"""``mergekit-expo card OUT``: (re)write the model card of an existing ExPO merge output."""

import logging
from pathlib import Path

import click
import yaml

from mergekit_expo.card.files import README, check_card_targets, publish
from mergekit_expo.card.lineage import lineage_of_config, lineage_of_pipeline
from mergekit_expo.card.pipeline_check import CONFIG, check_pipeline
from mergekit_expo.card.writer import card_files
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hosts import require_mergekit
from mergekit_expo.merge_config import key_mistakes

MERGEKITTY_CONFIG = "mergekitty_config.yml"  # what mergekitty writes instead
LOG = logging.getLogger("mergekit_expo")


@click.command("card")
@click.argument("out_path", type=click.Path())
@click.option("--search", "search_dir", type=click.Path(),
              help="The --out folder of the `mergekit-expo search` that chose α: adds how α was "
                   "chosen, with its table and plot")
@click.option("--multi-config", type=click.Path(dir_okay=False),
              help="The mergekit-multi config that wrote OUT_PATH, when an earlier stage is the expo one")
@click.option("--overwrite", is_flag=True,
              help="Replace mergekit's own card (never a README written or edited by someone else)")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors")
@reports_errors(interrupted="the card is moved into place in one rename: OUT_PATH holds the old card "
                            "or the new one")
def card_command(out_path, search_dir, multi_config, overwrite, verbose):
    """Write the Hub model card (README.md) of OUT_PATH, an ExPO merge output, from its
    mergekit_config.yml: lineage metadata, the formula with the SFT and aligned models,
    α, and with --search how α was chosen. The weights are never touched."""
    require_mergekit("mergekit-expo card")  # configs, cards and α are read through mergekit
    out = Path(out_path)
    source = read_merge_output(out, out_path)
    unchecked = {}
    if multi_config:
        pipeline, lineage, unchecked = read_pipeline(multi_config, out_path, source)
    else:
        pipeline, lineage = None, check_expo_output(out_path, source)
        warn_ignored_keys(out_path, source)
    warn_unverified_hub_ids(lineage)
    files = card_files(out, source, search=search_dir, pipeline=pipeline, unchecked=unchecked)
    check_card_targets(out, source, files, overwrite=overwrite)
    publish(out, files)
    written = ", ".join(str(out / name) for name in sorted(files, key=lambda n: n != README))
    click.echo(f"wrote {written}")


def read_merge_output(out: Path, out_path: str) -> str:
    """The text of OUT's mergekit_config.yml, if OUT is a finished mergekit output."""
    if not out_path.strip():  # an unset shell variable, not the current folder
        raise ExpoConfigError(f"OUT is empty ({out_path!r}): pass the folder mergekit-yaml or mergekit-expo "
                              "run wrote")
    if not out.is_dir():
        what = "does not exist" if not out.exists() else "is not a folder"
        raise ExpoConfigError(f"{out_path} {what}: pass the folder mergekit-yaml or mergekit-expo run wrote")
    if not (out / CONFIG).is_file() and (out / MERGEKITTY_CONFIG).is_file():
        raise ExpoConfigError(
            f"{out_path} is a mergekitty output ({MERGEKITTY_CONFIG}), and `card` describes mergekit merges "
            "only (mergekitty resolves some α settings differently): merge the config with `mergekit-expo "
            "run CONFIG OUT`, which writes the card, to publish with one")
    for name in (CONFIG, "config.json"):
        if not (out / name).is_file():
            raise ExpoConfigError(
                f"{out_path} is not a mergekit merge output (no {name}): pass the folder mergekit-yaml "
                "or mergekit-expo run wrote")
    return (out / CONFIG).read_text(encoding="utf-8")


def check_expo_output(out_path: str, source: str):
    """The lineage of OUT's own config, if it is an expo (or expo_trajectory) merge."""
    lineage = lineage_of_config(source, where=f"{out_path}/{CONFIG}")
    stage = lineage.final
    if not (stage.is_expo or stage.is_trajectory):
        raise ExpoConfigError(
            f"{out_path} is a {stage.config.merge_method} merge, not an expo one: `card` writes ExPO "
            "cards (for a mergekit-multi output with an expo stage, pass --multi-config PIPELINE.yml)")
    if not stage.aligned:
        raise ExpoConfigError(f"{out_path}/{CONFIG} names no aligned model besides the SFT base_model: "
                              "it is not the output of an expo merge")
    return lineage


def read_pipeline(multi_config: str, out_path: str, source: str):
    """The mergekit-multi config, its lineage and the stages that could not be checked
    (by name, with why), if every stage that could be checked is what was merged."""
    path = Path(multi_config)
    if not path.is_file():
        raise ExpoConfigError(f"--multi-config {multi_config} does not exist: pass the file given to "
                              "mergekit-multi")
    text = path.read_text(encoding="utf-8")
    lineage = lineage_of_pipeline(text, Path(out_path).name, where=f"--multi-config {multi_config}")
    if not lineage.expo_stages:
        raise ExpoConfigError(f"{multi_config} has no expo stage leading to {out_path}: `card` writes ExPO "
                              "cards")
    unchecked = check_pipeline(lineage, source, out=out_path, pipeline=multi_config)
    for name, why in unchecked.items():
        LOG.warning("stage `%s` could not be checked against what was merged: %s; the card says so",
                    name, why)
    return text, lineage, unchecked


def warn_ignored_keys(out_path: str, source: str) -> None:
    """A key mergekit ignored (a typo such as ``alhpa``) merged a default in its place: say so, as
    the card states what was merged, not what the key says."""
    from mergekit.config import MergeConfiguration

    data = yaml.safe_load(source)
    for mistake in key_mistakes(f"{out_path}/{CONFIG}", data, MergeConfiguration.model_validate(data)):
        LOG.warning("%s: mergekit ignored it when it merged, so the card states what was merged, not "
                    "what it says", mistake)


def warn_unverified_hub_ids(lineage) -> None:
    """A reference that is no folder here is published as a Hub id: say so unless the
    Hugging Face cache knows it (a relative path read from another folder looks the same)."""
    unknown = lineage.uncached_hub_ids()
    if unknown:
        them = "them as Hub ids; if they are local folders" if len(unknown) > 1 else \
            "it as a Hub id; if it is a local folder"
        LOG.warning("%s: no folder here and not in the Hugging Face cache, so the card names %s, run "
                    "card from the folder the merge ran in", ", ".join(unknown), them)
