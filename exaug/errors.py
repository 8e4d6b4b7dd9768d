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


def require_counts(counts: dict[str, int | None]) -> None:
    """Refuse an option that counts something (steps, a batch, epochs) below 1, named as the user
    gives it; an unset one (None) passes. One message for every command that takes counts."""
    for option, value in counts.items():
        if value is not None and value < 1:
            raise ExaugError(f"{option} must be at least 1, not {value}")


def require_learning_rate(lr: float) -> None:
    """Refuse a learning rate that is not positive (NaN included: it compares false)."""
    if not lr > 0:
        raise ExaugError(f"--lr must be positive, not {lr}")
