"""The one exception type for mistakes in what a user gave us (a config, a path, a data file).

The command-line tools print a ``UserError`` as one line (``<tool>: <message>``) and exit with status 2; anything
else is a bug and keeps its traceback. Messages name the file (and line, ``file:line``) and say what to do.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad user input: the CLIs print ``str(e)`` as one line and exit 2 (never a traceback)."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user named does not exist (both a ``UserError`` and a ``FileNotFoundError``)."""
