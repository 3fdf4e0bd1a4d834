"""The ``mergekit-expo`` command: one entry point, one subcommand per job."""

import click


@click.group()
def main():
    """ExPO tools for mergekit (merge with `mergekit-yaml`, `merge_method: expo`)."""
