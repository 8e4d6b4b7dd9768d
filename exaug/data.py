"""AugmentedFaces: a torch Dataset over the faces ``exaug augment`` (or ``exaug align``) wrote.

Both output forms are read through :func:`exaug.io.store.read_faces`. An HDF5 file is opened on the
first image read in each process and never pickled, so ``DataLoader(num_workers>0)`` works with fork
and spawn alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from exaug.expressions import EXPRESSIONS, expression_index
from exaug.io.store import read_faces


class AugmentedFaces(Dataset):
    """Items are ``(image, identity, expression, synthetic)``: the image as a float ``(3, H, W)``
    tensor in ``[0, 1]`` (or ``transform(PIL image)``), the identity as an index into
    :attr:`identities`, the expression as an index into :attr:`expressions` (-1 unknown).

    ``expressions`` keeps only faces of those expressions (names, any accepted spelling);
    ``synthetic`` keeps only generated (True) or only original (False) faces.
    """

    def __init__(self, path: Path | str, transform: Callable[[Image.Image], Any] | None = None,
                 expressions: Sequence[str] | None = None, synthetic: bool | None = None):
        self.table = read_faces(path)
        keep = np.ones(len(self.table), bool)
        if expressions is not None:
            keep &= np.isin(self.table.expression, [expression_index(name) for name in expressions])
        if synthetic is not None:
            keep &= self.table.synthetic == synthetic
        self.rows = np.flatnonzero(keep)
        self.transform = transform
        self.identities: list[str] = list(self.table.identities)
        self.expressions: list[str] = list(EXPRESSIONS)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, int, int, bool]:
        row = int(self.rows[index])
        image = self.table.images[row]
        if self.transform is not None:
            picture = self.transform(Image.fromarray(image))
        else:
            picture = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        table = self.table
        return picture, int(table.identity_index[row]), int(table.expression[row]), bool(table.synthetic[row])
