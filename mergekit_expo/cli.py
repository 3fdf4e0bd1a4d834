"""The ``mergekit-expo`` command: one entry point, one subcommand per job."""

import sys

import click

try:
    from mergekit_expo.demo import demo_command
    from mergekit_expo.lora import lora_command
    from mergekit_expo.run import run_command
    from mergekit_expo.search.command import search_command
except Exception as error:  # mergekit, transformers or peft could not even be imported
    from mergekit_expo.environment import start_failure

    explained = start_failure(error)
    if explained is None or {"-v", "--verbose"} & set(sys.argv[1:]):
        raise
    click.echo(f"Error: {explained}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(package_name="mergekit-expo", message="%(prog)s %(version)s")
def main():
    """ExPO tools for mergekit. Merging itself is `mergekit-yaml` with `merge_method: expo`."""


main.add_command(run_command)
main.add_command(demo_command)
main.add_command(lora_command)
main.add_command(search_command)
