"""The ``mergekit-expo`` command: one entry point, one subcommand per job."""

import pkgutil
import sys

import click

from mergekit_expo import hosts
from mergekit_expo.environment import start_failure
from mergekit_expo.errors import ExpoConfigError, first_line
from mergekit_expo.interruption import raise_if_interrupted

try:
    from mergekit_expo.card.command import card_command
    from mergekit_expo.lora import lora_command
    from mergekit_expo.search.command import search_command
except Exception as error:  # transformers or peft could not even be imported
    raise_if_interrupted()  # or an import a signal cut short
    explained = start_failure(error)
    if explained is None or {"-v", "--verbose"} & set(sys.argv[1:]):
        raise
    click.echo(f"Error: {explained}", err=True)
    sys.exit(1)

# Commands that run merges through mergekit's own run_merge load mergekit only when
# called: the others work beside any host, mergekitty included.
MERGING = {"run": "mergekit_expo.run:run_command", "demo": "mergekit_expo.demo:demo_command"}


class _Commands(click.Group):
    def invoke(self, ctx):
        hosts.report_as_errors()  # a host that cannot take expo becomes the error line
        return super().invoke(ctx)

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *MERGING])

    def get_command(self, ctx, name):
        if name not in MERGING:
            return super().get_command(ctx, name)
        what = f"mergekit-expo {name}"
        try:
            hosts.require_mergekit(what)
            return pkgutil.resolve_name(MERGING[name])
        except ExpoConfigError as error:
            return _refusing(name, str(error))
        except ImportError as error:  # a broken environment, or a mergekit whose API moved
            raise_if_interrupted()  # or an import a signal cut short ("initialization failed")
            explained = start_failure(error) or hosts.unsupported(
                "mergekit", f"{what}: {hosts.without_path(first_line(error))}")
            return _refusing(name, explained)


def _refusing(name: str, message: str) -> click.Command:
    """A stand-in that answers any call with ``message`` as one error line."""

    def refuse(**_ignored):
        raise click.ClickException(message)

    return click.Command(name, callback=refuse, help=f"Unavailable here: {message}",
                         short_help="unavailable here (see --help)", add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=_Commands)
@click.version_option(package_name="mergekit-expo", message="%(prog)s %(version)s")
def main():
    """ExPO tools for mergekit. Merging itself is `mergekit-yaml` with `merge_method: expo`."""


main.add_command(lora_command)
main.add_command(search_command)
main.add_command(card_command)
