"""The CLI edge: every failure becomes one line on stderr and a non-zero exit.

Tracebacks are shown only with -v. Exit codes: 1 for errors, 130 for Ctrl-C,
143 for SIGTERM, as a shell would report them.
"""

import errno
import functools
import re
import signal
import sys

import click

from mergekit_expo.errors import ExpoError
from mergekit_expo.interruption import Interrupted, on_signal, received

NOTHING_LEFT = "nothing was left that looks like a finished output"


def reports_errors(command=None, *, interrupted: str = NOTHING_LEFT):
    """Wrap a click callback; needs a ``verbose`` flag or mergekit's merge_options.

    ``interrupted`` says what an interruption leaves behind, in the command's terms.
    """
    if command is None:
        return functools.partial(reports_errors, interrupted=interrupted)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        options = kwargs.get("merge_options")
        verbose = kwargs.get("verbose") or getattr(options, "verbosity", 0)
        received.clear()
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except (Interrupted, KeyboardInterrupt) as error:
            _interrupted(getattr(error, "signum", signal.SIGINT), interrupted)
        except Exception as error:
            if received:
                _interrupted(received[0], interrupted)
            if verbose:
                raise
            _fail(describe(error), 1)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            received.clear()  # a later command in this process starts uninterrupted

    return wrapper


def _interrupted(signum: int, left: str):
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    _fail(f"interrupted ({name}); {left}", 128 + signum)


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


def _fail(message: str, code: int):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)
