"""A table's images, read on demand: from an HDF5 dataset or from the PNGs of a folder."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
from PIL import Image

from exaug.errors import InputError


class ImageColumn(ABC):
    """Images of a table, read on demand by index, slice or array of indices."""

    size: tuple[int, int] | None  # (height, width), None when unknown

    def __init__(self, count: int):
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._read_rows(np.array([range(self._count)[index]]))[0]
        if isinstance(index, slice):
            return self._read_rows(np.arange(*index.indices(self._count)))
        rows = np.asarray(index, np.int64).reshape(-1)
        if ((rows < -self._count) | (rows >= self._count)).any():
            raise IndexError(f"image index out of range for {self._count} rows")
        return self._read_rows(np.where(rows < 0, rows + self._count, rows))

    def _empty(self) -> np.ndarray:
        return np.zeros((0, *(self.size or (0, 0)), 3), np.uint8)

    @abstractmethod
    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Images of ``rows`` (valid, non-negative), in that order."""

    def close(self) -> None:
        """Release open files; reading again reopens them."""


class H5Images(ImageColumn):
    """``images`` of an HDF5 table. The file is opened on first read in each process and never
    pickled, so DataLoader workers (forked or spawned) each get their own handle."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        super().__init__(shape[0])
        self.path = path
        self.size = (shape[1], shape[2])
        self._file: h5py.File | None = None
        self._pid = 0

    def _dataset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file["images"]

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return self._empty()
        try:
            dataset = self._dataset()
            if (np.diff(rows) == 1).all():
                return dataset[rows[0]:rows[-1] + 1]
            unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
            return dataset[unique][inverse]
        except (OSError, RuntimeError) as err:  # a truncated or damaged file
            raise InputError(f"{self.path}: cannot read its images (damaged or truncated?): {err}") from err

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": 0}


class PngImages(ImageColumn):
    """PNGs of a folder table, listed by the manifest; only files inside the folder are read (a
    manifest naming ``../secret`` or a link out of the folder is refused)."""

    def __init__(self, root: Path, paths: list[str], size: tuple[int, int] | None):
        super().__init__(len(paths))
        self.root = root
        self.paths = paths
        for path in paths:
            relative = PurePosixPath(path)
            if relative.is_absolute() or ".." in relative.parts:
                raise InputError(f"{root / 'manifest.csv'}: the path {path!r} leaves the folder")
        self.size = self._load(0).shape[:2] if paths else size

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return self._empty()
        return np.stack([self._load(row) for row in rows])

    def _load(self, row: int) -> np.ndarray:
        file = self.root / self.paths[row]
        if not file.resolve().is_relative_to(self.root.resolve()):
            raise InputError(f"{file}: links out of {self.root}; exaug reads only the folder's own images")
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"))

