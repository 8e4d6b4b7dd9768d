"""The row schema: :class:`FaceRows`, a batch of faces to commit, checked before it reaches a part."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exaug.expressions import EXPRESSIONS

# the table's own datasets; extra columns may not take these names
TABLE_DATASETS = frozenset({"images", "identity", "identities", "source", "sources", "expression", "face",
                            "synthetic", "failed_sources", "failure_reasons", "path", "done_sources",
                            "source_stamps"})
# augment --like: the extra column saying which reference (an index into the ``references`` attribute)
# a generated face follows, -1 for the rest; such a face's expression is unnamed (-1)
REFERENCE_COLUMN = "reference"


@dataclass
class FaceRows:
    """A batch of faces to commit; validated on creation so a bad batch never reaches a part file."""

    images: np.ndarray  # (n, H, W, 3) uint8 RGB
    identity: list[str]
    expression: np.ndarray  # (n,) int8 index into EXPRESSIONS, -1 unknown
    source: list[str]  # posix paths relative to the input
    face: np.ndarray  # (n,) int16
    synthetic: np.ndarray  # (n,) bool
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # numeric (n, ...) columns

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be (n, H, W, 3) uint8, not {self.images.shape} {self.images.dtype}")
        self.identity = [str(name) for name in self.identity]
        self.source = [str(name) for name in self.source]
        self.expression = _checked_expressions(np.asarray(self.expression))
        self.face = np.asarray(self.face, np.int16)
        self.synthetic = np.asarray(self.synthetic, bool)
        self.extra = {name: np.asarray(self.extra[name]) for name in sorted(self.extra)}  # HDF5 lists them sorted
        _check_lengths(len(self.images), {"identity": self.identity, "expression": self.expression,
                                          "source": self.source, "face": self.face, "synthetic": self.synthetic,
                                          **{f"extra[{name}]": values for name, values in self.extra.items()}})
        if not_numeric := [name for name, kept in self.extra.items() if not np.issubdtype(kept.dtype, np.number)]:
            raise ValueError(f"extra columns must be numeric: {not_numeric}")
        if clash := TABLE_DATASETS.intersection(self.extra):
            raise ValueError(f"extra column names {sorted(clash)} are taken by the table's own columns")
        follows = self.extra[REFERENCE_COLUMN] >= 0 if REFERENCE_COLUMN in self.extra else False
        if (self.synthetic & (self.expression < 0) & ~follows).any():
            raise ValueError("a synthetic face needs the expression it was generated with, or the reference it follows")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def empty(cls, height: int = 0, width: int = 0) -> FaceRows:
        """No rows: what a batch whose sources all failed commits."""
        return cls(np.zeros((0, height, width, 3), np.uint8), [], np.zeros(0, np.int8), [],
                   np.zeros(0, np.int16), np.zeros(0, bool))

    @classmethod
    def concat(cls, batches: Sequence[FaceRows]) -> FaceRows:
        """All rows in order; empty batches are skipped so they need not carry the extra columns."""
        if not batches:
            raise ValueError("no batches to concatenate")
        filled = [batch for batch in batches if len(batch)] or list(batches[:1])
        check_same_extras([batch.extra for batch in filled])
        return cls(
            images=np.concatenate([batch.images for batch in filled]),
            identity=[name for batch in filled for name in batch.identity],
            expression=np.concatenate([batch.expression for batch in filled]),
            source=[name for batch in filled for name in batch.source],
            face=np.concatenate([batch.face for batch in filled]),
            synthetic=np.concatenate([batch.synthetic for batch in filled]),
            extra={name: np.concatenate([batch.extra[name] for batch in filled]) for name in filled[0].extra},
        )


def _checked_expressions(expression: np.ndarray) -> np.ndarray:
    if ((expression < -1) | (expression >= len(EXPRESSIONS))).any():
        raise ValueError(f"expression must be -1 or an index into the {len(EXPRESSIONS)} EXPRESSIONS")
    return expression.astype(np.int8)


def _check_lengths(count: int, columns: dict[str, Any]) -> None:
    wrong = {name: len(values) for name, values in columns.items() if len(values) != count}
    if wrong:
        raise ValueError(f"columns must have one entry per image ({count}): {wrong}")


def check_same_extras(extras: Sequence[dict[str, np.ndarray]]) -> None:
    """Rows from different batches end up in one dataset per column, so the columns must agree."""
    specs = [{name: (str(values.dtype), values.shape[1:]) for name, values in extra.items()} for extra in extras]
    for spec in specs[1:]:
        if spec != specs[0]:
            raise ValueError(f"extra columns differ between batches: {specs[0]} != {spec}")
