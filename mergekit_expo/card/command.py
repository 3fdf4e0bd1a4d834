"""``mergekit-expo card OUT``: (re)write the model card of an existing ExPO merge output."""

from pathlib import Path

import click

from mergekit_expo.card.files import README, check_card_targets, publish
from mergekit_expo.card.lineage import lineage_of_config, lineage_of_pipeline
from mergekit_expo.card.writer import card_files
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.errors import ExpoConfigError

CONFIG = "mergekit_config.yml"


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
    out = Path(out_path)
    source = read_merge_output(out, out_path)
    pipeline = read_pipeline(multi_config, out, source) if multi_config else None
    if pipeline is None:
        check_expo_output(out_path, source)
    files = card_files(out, source, search=search_dir, pipeline=pipeline)
    check_card_targets(out, source, files, overwrite=overwrite)
    publish(out, files)
    written = ", ".join(str(out / name) for name in sorted(files, key=lambda n: n != README))
    click.echo(f"wrote {written}")


def read_merge_output(out: Path, out_path: str) -> str:
    """The text of OUT's mergekit_config.yml, if OUT is a finished mergekit output."""
    if not out.is_dir():
        what = "does not exist" if not out.exists() else "is not a folder"
        raise ExpoConfigError(f"{out_path} {what}: pass the folder mergekit-yaml or mergekit-expo run wrote")
    for name in (CONFIG, "config.json"):
        if not (out / name).is_file():
            raise ExpoConfigError(
                f"{out_path} is not a mergekit merge output (no {name}): pass the folder mergekit-yaml "
                "or mergekit-expo run wrote")
    return (out / CONFIG).read_text(encoding="utf-8")


def check_expo_output(out_path: str, source: str) -> None:
    stage = lineage_of_config(source, where=f"{out_path}/{CONFIG}").final
    if not stage.is_expo:
        raise ExpoConfigError(
            f"{out_path} is a {stage.config.merge_method} merge, not an expo one: `card` writes ExPO "
            "cards (for a mergekit-multi output with an expo stage, pass --multi-config PIPELINE.yml)")
    if not stage.aligned:
        raise ExpoConfigError(f"{out_path}/{CONFIG} names no aligned model besides the SFT base_model: "
                              "it is not the output of an expo merge")


def read_pipeline(multi_config: str, out: Path, source: str) -> str:
    """The mergekit-multi config, checked against what OUT's own config says."""
    path = Path(multi_config)
    if not path.is_file():
        raise ExpoConfigError(f"--multi-config {multi_config} does not exist: pass the file given to mergekit-multi")
    text = path.read_text(encoding="utf-8")
    lineage = lineage_of_pipeline(text, out.name, where=f"--multi-config {multi_config}")
    written = lineage_of_config(source, where=f"{out}/{CONFIG}").final
    final = lineage.final
    if (written.config.merge_method != final.config.merge_method
            or len(written.inputs) != len(final.inputs)):
        raise ExpoConfigError(
            f"{out} was not written by the final stage of {multi_config} ({out}/{CONFIG} is a "
            f"{written.config.merge_method} merge of {len(written.inputs)} models): pass the pipeline "
            "that wrote it")
    if not lineage.expo_stages:
        raise ExpoConfigError(f"{multi_config} has no expo stage leading to {out}: `card` writes ExPO cards")
    return text
