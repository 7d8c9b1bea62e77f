"""The one exception type for what a person must fix: an unknown model, a bad flag, a missing file.

The CLI, the job and the app catch `UserError` alone and show its message without a traceback
(exit code 2, or a 4xx). Anything else is a bug and keeps its traceback. The subclasses are also the
built-in type a caller would expect (`KeyError` for an unknown name, `FileNotFoundError` for a
missing file), so `except FileNotFoundError` around a call keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user gave: the message says what to change."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownName(UserError, KeyError):
    """A model (or other named thing) that does not exist; the message lists the known ones."""


class NotFound(UserError, FileNotFoundError):
    """A path or URI the user named that is not there, or lacks a file it must hold."""
