"""The installed ``mergekit-expo`` script: the commands of :mod:`mergekit_expo.cli`, with
Ctrl-C and SIGTERM handled from the first import to the end of the process.

Left to Python and click, a Ctrl-C during the imports is a KeyboardInterrupt traceback,
before a command starts it is click's ``Aborted!`` (exit 1), and after the command has
finished it is nothing at all: Python restores the default action before it tears its
modules down (more than a second with torch loaded), which kills the process without a
word. Here each is one ``Error:`` line and exit 130 (SIGTERM: 143) saying whether the
output is complete, and the process ends once the exit handlers (atexit) have run,
without that teardown.
"""

import atexit
import os
import signal
import sys

from mergekit_expo.interruption import Interrupted, on_signal, received

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_status = 0  # what the process exits with
_saying = False  # an interruption is being (or was) reported: a further signal ends the process


def main() -> int:
    global _status
    for signum in SIGNALS:
        signal.signal(signum, on_signal)
    atexit.register(_end)  # registered first: runs after every other exit handler
    try:
        _status = _run()
    except BaseException:
        _status = 1  # Python prints the traceback (-v, or a failure with nothing to explain it)
        raise
    finally:
        for signum in SIGNALS:
            signal.signal(signum, _after_the_end)
    return _status


def _run() -> int:
    try:
        from mergekit_expo.cli import main as commands

        commands(prog_name="mergekit-expo")  # click's standalone mode always ends in SystemExit
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if code == 0 and received:  # swallowed by an import, and no command ran to say so (--help)
            return _interrupted(received[0])
        return code
    except (Interrupted, KeyboardInterrupt) as error:  # outside a command, or a second one in its report
        return _interrupted(getattr(error, "signum", signal.SIGINT))
    except Exception:
        if received:  # turned into another exception, by an import a signal cut short
            return _interrupted(received[0])
        raise
    return 0


def _interrupted(signum: int) -> int:
    global _saying
    _saying = True
    for number in SIGNALS:  # the line is being written: a second Ctrl-C only ends the process
        signal.signal(number, _after_the_end)
    from mergekit_expo.cli_errors import FINISHED, NOT_STARTED, outcome, report_interrupted

    if outcome.reported:  # the command's own error line is out: the signal only cut its exit short
        return 128 + signum
    if outcome.finished:
        return report_interrupted(signum, FINISHED)
    return report_interrupted(signum, outcome.interrupted if outcome.started else NOT_STARTED)


def _after_the_end(signum, frame):
    """A signal once the command is done (or its interruption is being said): said once if
    it succeeded, then the exit goes on; any other ends the process at once."""
    global _status
    if _status != 0 or _saying:
        os._exit(_status or 128 + signum)
    _status = _interrupted(signum)


def _end() -> None:
    """The process ends here: what remains is the modules' teardown, uninterruptible."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or a reader that went away
            pass
    os._exit(_status)
