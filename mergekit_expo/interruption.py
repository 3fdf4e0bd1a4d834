"""Ctrl-C and SIGTERM as an exception (the CLI edge installs :func:`on_signal`), and a
check for one that something swallowed."""


class Interrupted(BaseException):
    """Raised in the main thread on SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


received = []  # signals seen: C extensions sometimes turn the exception into another


def on_signal(signum, frame):
    received.append(signum)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise the interruption again where it was lost.

    An exception raised while Python runs a weakref callback or ``__del__`` is printed and
    dropped, so a signal arriving then would go unnoticed: long loops call this between
    steps, and outputs check once more before they are published.
    """
    if received:
        raise Interrupted(received[0])
