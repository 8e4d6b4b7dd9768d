"""Find the images under INPUT and what their folders say about them.

Three layouts are common and exaug reads each without flags: a flat folder (identity = file stem),
one sub-folder per identity (the face-recognition layout), and one sub-folder per expression (the
expression-dataset layout, where ``<expression>/<identity>/x.jpg`` also names the identity). A layout is an expression layout when every sub-folder holding images
is named after an expression (through the aliases in :mod:`exaug.expressions`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from exaug.errors import InputError
from exaug.expressions import canonical_expression
from exaug.io.images import is_image_path


@dataclass(frozen=True)
class Source:
    """One input image: where it is, and the identity/expression its location implies."""

    path: Path
    relpath: str  # posix, relative to INPUT: the stable key for resume, shards and manifests
    identity: str  # "" when the layout gives none
    expression: str | None  # canonical name, or None when unknown


def discover_sources(root: Path | str) -> list[Source]:
    """All images under ``root`` in a deterministic order; a missing or image-less root is an error."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        if not is_image_path(root):
            raise InputError(f"{root}: not an image file (expected a folder of images or an image)")
        return [Source(root, root.name, root.stem, None)]
    paths = _image_files(root)
    if not paths:
        raise InputError(f"{root}: no image files found (looked for {', '.join(sorted(_SHOWN_SUFFIXES))})")
    relpaths = [path.relative_to(root).as_posix() for path in paths]
    top_folders = {rel.split("/", 1)[0] for rel in relpaths if "/" in rel}
    by_expression = bool(top_folders) and all(canonical_expression(name) for name in top_folders)
    return [_source(path, rel, by_expression) for path, rel in zip(paths, relpaths)]


_SHOWN_SUFFIXES = {".jpg", ".png", ".webp", ".bmp", ".tif"}


def _source(path: Path, relpath: str, by_expression: bool) -> Source:
    """Identity is the image's own folder (so ``train/<id>/x.jpg`` works), the stem when flat."""
    parts = relpath.split("/")
    if len(parts) == 1:
        return Source(path, relpath, path.stem, None)
    if by_expression:
        return Source(path, relpath, parts[-2] if len(parts) > 2 else "", canonical_expression(parts[0]))
    return Source(path, relpath, parts[-2], None)


def _image_files(root: Path) -> list[Path]:
    """Image files below ``root``, hidden files and folders (our own ``.exaug-parts`` too) skipped."""
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(folder) / name for name in sorted(filenames) if is_image_path(Path(name)))
    return found
