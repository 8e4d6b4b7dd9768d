"""Errors a user can act on.

Every failure the CLI reports without a traceback is an :class:`ExaugError`; its message names
the file and the reason. Anything else escaping is a bug.
"""

from __future__ import annotations

from pathlib import Path


class ExaugError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""


class InputError(ExaugError):
    """A path given on the command line is missing, empty or of the wrong kind."""


class ImageLoadError(ExaugError):
    """One image could not be read; the run records it and goes on."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
