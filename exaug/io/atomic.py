"""Replacing a file whole or not at all: write a temporary file beside it, fsync, rename over it.

Every file exaug writes that a crash must not leave half-written (face tables and their parts,
PNGs, checkpoints, sample sheets, reports) goes through :func:`replacing`, so a reader sees the old
file or the new one whenever the process dies. Leftover temporaries are named ``.<name>.tmp``, which
is how :mod:`exaug.io.store` recognises them on resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed over ``path``,
    on failure removed."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` through :func:`replacing`, then fsync the folder so the rename itself
    survives a power cut (a checkpoint's ``latest`` pointer must never name a missing file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        write(handle)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path
