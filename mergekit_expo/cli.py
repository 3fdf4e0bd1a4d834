"""The ``mergekit-expo`` command: one entry point, one subcommand per job."""

import click

from mergekit_expo.card.command import card_command
from mergekit_expo.demo import demo_command
from mergekit_expo.lora import lora_command
from mergekit_expo.run import run_command
from mergekit_expo.search.command import search_command


@click.group()
@click.version_option(package_name="mergekit-expo", message="%(prog)s %(version)s")
def main():
    """ExPO tools for mergekit. Merging itself is `mergekit-yaml` with `merge_method: expo`."""


main.add_command(run_command)
main.add_command(demo_command)
main.add_command(lora_command)
main.add_command(search_command)
main.add_command(card_command)
