"""The CLI edge: every failure becomes one line on stderr and a non-zero exit.

Tracebacks are shown only with -v. Exit codes: 1 for errors, 130 for Ctrl-C,
143 for SIGTERM, as a shell would report them.
"""

import contextlib
import errno
import functools
import logging
import re
import signal
import sys

import click

from mergekit_expo.compat.tqdm import bar_in_progress
from mergekit_expo.compat.transformers import deprecation_notes_hidden
from mergekit_expo.errors import ExpoError
from mergekit_expo.interruption import (
    Interrupted,
    complete_outputs,
    on_signal,
    published,
    received,
)

NOTHING_LEFT = "nothing was left that looks like a finished output (an earlier one it was to replace is kept)"
NOT_STARTED = "the command had not started: nothing was written"
FINISHED = "the command had finished: what it wrote is complete"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Outcome:
    """How far the last command got, for a signal its wrapper cannot report (see ``console``)."""

    started = False
    interrupted = NOTHING_LEFT  # its words for what an interruption leaves
    finished = False  # it returned
    reported = False  # its Error: line is out


outcome = Outcome()


def reports_errors(command=None, *, interrupted: str = NOTHING_LEFT):
    """Wrap a click callback; needs a ``verbose`` flag or mergekit's merge_options.

    ``interrupted`` says what an interruption leaves behind, in the command's terms,
    before any output of it is complete (then the line says that it is).
    """
    if command is None:
        return functools.partial(reports_errors, interrupted=interrupted)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        options = kwargs.get("merge_options")
        verbose = kwargs.get("verbose") or getattr(options, "verbosity", 0)
        published.clear()
        outcome.finished = outcome.reported = False
        if received:  # a signal an import swallowed (leaving it half done): the command does not start
            signum = received[0]
            received.clear()
            fail_interrupted(signum, NOT_STARTED)
        outcome.started, outcome.interrupted = True, interrupted
        previous = {s: signal.signal(s, on_signal) for s in SIGNALS}
        try:
            with deprecation_notes_hidden(not verbose), _warnings_as_lines():
                result = command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except (Interrupted, KeyboardInterrupt) as error:
            fail_interrupted(getattr(error, "signum", signal.SIGINT), interrupted)
        except Exception as error:
            if received:
                fail_interrupted(received[0], interrupted)
            if verbose:
                raise
            _say(describe(error))
            sys.exit(1)
        else:
            if received:  # swallowed where it arrived, and the command went on to the end
                fail_interrupted(received[0], FINISHED)
            outcome.finished = True
            return result
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            received.clear()  # a later command in this process starts uninterrupted

    return wrapper


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a line is logged (click's test runner
    and redirections swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


@contextlib.contextmanager
def _warnings_as_lines():
    """The package's warnings printed as the message alone, every one: left to logging, those
    before any library configures the root logger print bare and later ones as
    ``WARNING:mergekit_expo:…``."""
    logger = logging.getLogger("mergekit_expo")
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def fail_interrupted(signum: int, left: str):
    sys.exit(report_interrupted(signum, left))


def report_interrupted(signum: int, left: str) -> int:
    """Print ``interrupted (Ctrl-C); <left>``, or, once an output of the command is complete,
    which one (an interruption must never leave the user guessing whether it is); return the
    exit status."""
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    complete = complete_outputs()
    if complete:
        _say(f"interrupted ({name}) after {', '.join(complete)} {'was' if len(complete) == 1 else 'were'} "
             "complete: written in full before the interruption")
    else:
        _say(f"interrupted ({name}); {left}")
    return 128 + signum


def describe(error: Exception) -> str:
    """One line for any exception, in the user's terms where we know them."""
    if isinstance(error, ExpoError):
        return str(error)
    code = _os_error_code(error)
    if code == errno.ENOSPC:
        return ("no space left on the device while writing the output: free disk space or write to "
                "another disk")
    if code == errno.EFBIG:
        return (
            "an output file exceeds the file size limit: raise `ulimit -f` or use a "
            "smaller --out-shard-size"
        )
    if type(error).__name__ == "UnpicklingError" and "weights_only" in str(error):
        # torch's advice here (weights_only=False) would run whatever code the pickle holds
        return ("a pickled checkpoint holds more than tensors (it may contain code), so it was "
                "not loaded: convert it to safetensors from a trusted source")
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]} (run with -v for the full traceback)"


def _os_error_code(error: Exception):
    # safetensors' writer reports OS errors as text: "I/O error: ... (os error 28)".
    if isinstance(error, OSError) and error.errno:
        return error.errno
    match = re.search(r"os error (\d+)", str(error))
    return int(match.group(1)) if match else None


def _say(message: str) -> None:
    if bar_in_progress():  # its line is not ended: the error starts a line of its own
        click.echo("", err=True)
    click.echo(f"Error: {message}", err=True)
    outcome.reported = True
