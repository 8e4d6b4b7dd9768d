"""Content hashes of files: what outputs record about the model and the ``--like`` reference they
were made with, so a resumed run can tell the same file from a changed one whatever its path."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_hash(path: Path | str) -> str:
    """The sha256 of ``path``'s bytes, hex, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
