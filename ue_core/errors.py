"""Errors that reach the user as one line: the CLI prints ``error: <message>`` and exits non-zero.

Every message names the input it is about (a path, a URI, a field, an index), so a user can act on it
without reading a traceback.
"""


class UEError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidInputError(UEError, ValueError):
    """An argument or config value is out of range or of the wrong shape."""


class DatasetFormatError(UEError):
    """A dataset's layout is not recognised, or a file in it is corrupt or truncated."""


class ReleaseCheckError(UEError):
    """A release violates an invariant (budget, range, NaN, index or label alignment)."""
