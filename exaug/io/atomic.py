"""Replacing a file whole or not at all: write a temporary file beside it, fsync, rename over it.

Every file exaug writes that a crash must not leave half-written (face tables and their parts,
PNGs, checkpoints, sample sheets, reports, videos) goes through :class:`Replacement`, mostly by way
of :func:`replacing`, so a reader sees the old file or the new one whenever the process dies.
Leftover temporaries are named ``.<name>.tmp`` (``.<name>.tmp<suffix>`` for writers that pick the
format from the name), which is how :mod:`exaug.io.store` recognises them on resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


class Replacement:
    """A pending replacement of ``path``: write ``temporary``, then :meth:`commit` or :meth:`discard`.

    For writers whose file outlives one ``with`` block (the video writer opens, writes and closes
    in separate calls); everything else uses :func:`replacing`. ``keep_suffix`` ends the temporary
    name with ``path``'s suffix, for libraries (FFmpeg) that choose the container from it."""

    def __init__(self, path: Path | str, *, keep_suffix: bool = False):
        self.path = Path(path)
        self.temporary = self.path.with_name(f".{self.path.name}.tmp{self.path.suffix if keep_suffix else ''}")

    def commit(self, *, sync_folder: bool = False) -> None:
        """fsync the temporary and rename it over ``path``; with ``sync_folder``, fsync the folder
        too, so the rename itself survives a power cut."""
        with open(self.temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(self.temporary, self.path)
        if sync_folder:
            _fsync_folder(self.path.parent)

    def discard(self) -> None:
        """Remove the temporary; ``path`` stays as it was."""
        self.temporary.unlink(missing_ok=True)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed over ``path``,
    on failure removed."""
    replacement = Replacement(path)
    try:
        yield replacement.temporary
        replacement.commit()
    except BaseException:
        replacement.discard()
        raise


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` through :func:`replacing`, then fsync the folder so the rename itself
    survives a power cut (a checkpoint's ``latest`` pointer must never name a missing file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        write(handle)
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
