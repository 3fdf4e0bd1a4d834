"""Ctrl-C and SIGTERM as an exception (the CLI edge installs :func:`on_signal`), a check
for one that something swallowed, steps that a signal must not cut in half, and which
outputs are complete (what an interruption message must say)."""

import contextlib
from pathlib import Path
from typing import List, Tuple


class Interrupted(BaseException):
    """Raised in the main thread on SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


received = []  # signals seen: C extensions sometimes turn the exception into another
published: List[Tuple[Path, str]] = []  # outputs this process published: (absolute path, as given)
_deferring = 0


def on_signal(signum, frame):
    received.append(signum)
    if not _deferring:
        raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise the interruption again where it was lost.

    An exception raised while Python runs a weakref callback or ``__del__`` is printed and
    dropped, so a signal arriving then would go unnoticed: long loops call this between
    steps, and outputs check once more before they are published.
    """
    if received:
        raise Interrupted(received[0])


@contextlib.contextmanager
def deferred():
    """A step that must not stop half-way (moving an output into place, the previous one
    out): a signal arriving inside waits, and is raised when the step is done."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        raise_if_interrupted()


def record_published(path: Path, given) -> None:
    published.append((Path(path).absolute(), str(given)))


def complete_outputs() -> List[str]:
    """The outputs this process published that are still where it put them, as given
    (one published inside another's staging folder is gone with that folder)."""
    return list(dict.fromkeys(given for path, given in published if path.exists()))
