"""Content hashes of files: what outputs record about the model and the ``--like`` reference they
were made with, and about each input image, so a resumed run can tell the same file from a changed
one whatever its path or its modification time."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_hash(path: Path | str) -> str:
    """The sha256 of ``path``'s bytes, hex, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: Path | str) -> str:
    """``"<bytes> <modified ns> <sha256>"`` of ``path``, taken before it is read: what a resumed run
    compares to tell whether an input image changed since its faces were written. Raises OSError."""
    stat = os.stat(path)
    return f"{stat.st_size} {stat.st_mtime_ns} {file_hash(path)}"


def same_file(stamp: str, path: Path | str) -> bool:
    """Whether ``path`` still holds what ``stamp`` recorded. Size and modification time equal are
    taken as unchanged without reading (as make and rsync do); a file touched or copied since is
    hashed, so only a change of content counts. A file that cannot be read has changed, and so has
    one whose stamp does not parse (a hand-edited ``sources.csv``): reading it again is safe."""
    try:
        size, modified, sha256 = stamp.split()
        stat = os.stat(path)
        if stat.st_size != int(size):
            return False
        return stat.st_mtime_ns == int(modified) or file_hash(path) == sha256
    except (OSError, ValueError):
        return False
