"""Find the images under INPUT and what their folders say about them.

Three layouts are common and exaug reads each without flags: a flat folder (identity = file stem),
one sub-folder per identity (the face-recognition layout), and one sub-folder per expression (the
expression-dataset layout, where ``<expression>/<identity>/x.jpg`` also names the identity). A layout is an expression layout when every sub-folder holding images
is named after an expression (through the aliases in :mod:`exaug.expressions`).

Folders are walked once each (by device and inode), so a symlink loop cannot multiply the input; a
folder that cannot be listed becomes a failed source like an unreadable file, never a silent gap.
File names that are not valid UTF-8 keep their bytes as surrogate escapes in ``path`` and are
recorded with backslash escapes in ``relpath``, which every output format can store.

exaug's own folder outputs (face tables: ``exaug.json`` beside ``manifest.csv``) are never read as
photos: one written inside its input folder was read back on the next run, its generated faces
taken for new originals and edited again. A table's faces are read as a table
(:func:`exaug.io.store.read_faces`), which knows the originals from the generated copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exaug.errors import ImageLoadError, InputError
from exaug.expressions import canonical_expression
from exaug.io.images import MAX_PIXELS, is_image_path, load_image
from exaug.io.store import is_face_table


@dataclass(frozen=True)
class Source:
    """One input image: where it is, and the identity/expression its location implies."""

    path: Path
    relpath: str  # posix, relative to INPUT: the stable key for resume, shards and manifests
    identity: str  # "" when the layout gives none
    expression: str | None  # canonical name, or None when unknown
    error: str | None = None  # why it cannot be read at all (a folder that cannot be listed)


def load_source(source: Source, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The source's pixels (see :func:`~exaug.io.images.load_image`); ImageLoadError saying why not."""
    if source.error:
        raise ImageLoadError(source.path, source.error)
    return load_image(source.path, max_pixels)


def discover_sources(root: Path | str, max_pixels: int = MAX_PIXELS) -> list[Source]:
    """All images under ``root`` in a deterministic order; a missing or image-less root is an error,
    and so is a single image that cannot be read (a folder lists its bad files and goes on; one
    file is the whole input; ``max_pixels`` as for :func:`load_source`)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        if not is_image_path(root):
            raise InputError(f"{root}: not an image file (expected a folder of images or an image)")
        load_image(root, max_pixels)  # ImageLoadError: the one line saying why
        return [Source(root, root.name, root.stem, None)]
    if is_face_table(root):
        raise InputError(f"{root}: a face table exaug wrote; its faces are aligned already (exaug augment reads "
                         "its original faces), or give the photos it was made from")
    paths, unreadable = _image_files(root)
    if unreadable and unreadable[0][0] == root:
        raise InputError(f"{root}: {unreadable[0][1]}")
    if not paths and not unreadable:
        raise InputError(f"{root}: no image files found (looked for {', '.join(sorted(_SHOWN_SUFFIXES))})")
    relpaths = [recorded_name(path.relative_to(root).as_posix()) for path in paths]
    top_folders = {rel.split("/", 1)[0] for rel in relpaths if "/" in rel}
    by_expression = bool(top_folders) and all(canonical_expression(name) for name in top_folders)
    sources = [_source(path, rel, by_expression) for path, rel in zip(paths, relpaths)]
    return sources + [Source(folder, recorded_name(folder.relative_to(root).as_posix()) + "/", "", None, reason)
                      for folder, reason in unreadable]


def recorded_name(name: str) -> str:
    """``name`` as valid UTF-8: bytes a file system gave that are not UTF-8 (surrogate escapes in a
    Python str) become ``\\xNN``, so tables, manifests and consoles can hold every input's name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_SHOWN_SUFFIXES = {".jpg", ".png", ".webp", ".bmp", ".tif"}


def _source(path: Path, relpath: str, by_expression: bool) -> Source:
    """Identity is the image's own folder (so ``train/<id>/x.jpg`` works), the stem when flat."""
    parts = relpath.split("/")
    if len(parts) == 1:
        return Source(path, relpath, Path(relpath).stem, None)
    if by_expression:
        return Source(path, relpath, parts[-2] if len(parts) > 2 else "", canonical_expression(parts[0]))
    return Source(path, relpath, parts[-2], None)


def _image_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files below ``root``, hidden files and folders (our own ``.exaug-parts`` too) and exaug's
    folder outputs skipped, each folder once however many links lead to it; and the folders that
    could not be listed."""
    found: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()

    def refused(err: OSError) -> None:
        unreadable.append((Path(err.filename), f"folder cannot be read ({err.strerror or err})"))

    for folder, dirnames, filenames in os.walk(root, onerror=refused, followlinks=True):
        try:
            stat = os.stat(folder)
        except OSError as err:
            refused(err)
            dirnames[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:  # a link back to a folder already walked (a loop)
            dirnames[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not is_face_table(Path(folder) / d))
        found.extend(Path(folder) / name for name in sorted(filenames) if is_image_path(Path(name)))
    return found, sorted(unreadable)
