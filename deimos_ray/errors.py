"""The error a user can act on."""

from __future__ import annotations


class UsageError(ValueError):
    """A wrong setting, input or run folder: the jobs print its message as one line
    (``error: ...``) and exit with status 2, without a traceback."""
