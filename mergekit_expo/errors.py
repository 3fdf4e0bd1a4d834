"""Exception types, one per family of failure, each carrying a one-line message.

None of them subclass ValueError on purpose: pydantic only wraps ValueError and
AssertionError raised inside validators, so these reach the user unchanged.
"""


class ExpoError(Exception):
    """Base class: the message is one line saying what is wrong and what to do."""


class ExpoConfigError(ExpoError):
    """The merge configuration or a command-line parameter is wrong."""


class ExpoInputError(ExpoError):
    """A model, adapter or data file cannot be used as given."""


class ExpoNumericsError(ExpoError):
    """A tensor holds, or the extrapolation produced, a non-finite value."""


class ExpoEngineError(ExpoError):
    """An α-search engine does not hold the weights it was asked to set."""


class ExpoStorageError(ExpoError):
    """The search's study could not be read or written while the search ran."""


def first_line(error: BaseException) -> str:
    """A library's exception as one line: its message's first line, else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
