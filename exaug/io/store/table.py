"""The table model: :class:`FaceTable` (rows read back, or a writer's ledger) and joining tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exaug.io.store.image_columns import ImageColumn
from exaug.io.store.rows import FaceRows, check_same_extras


@dataclass
class FaceTable:
    """Rows read back from either form: metadata as numpy arrays, images read lazily through
    ``images[i]``, ``images[a:b]`` or ``images[array]`` (each giving ``(..., H, W, 3)`` uint8)."""

    identities: list[str]  # names in order of first appearance
    identity_index: np.ndarray  # (N,) int32 into identities
    sources: list[str]
    source_index: np.ndarray  # (N,) int32 into sources
    expression: np.ndarray  # (N,) int8, -1 unknown
    face: np.ndarray  # (N,) int16
    synthetic: np.ndarray  # (N,) bool
    extra: dict[str, np.ndarray]
    failures: list[tuple[str, str]]  # (source, reason)
    attrs: dict[str, Any] = field(default_factory=dict)
    run_key: dict[str, Any] | None = None
    images: ImageColumn | None = None  # None only for the writer's in-memory ledger
    paths: list[str] | None = None  # folder form: each row's PNG, relative to the folder
    done: list[str] | None = None  # the sources this table completes, when recorded; else derived
    stamps: dict[str, str] = field(default_factory=dict)  # source -> its file's stamp when read
    # (exaug.io.digest.file_stamp): how a resumed run tells a changed input image

    def __len__(self) -> int:
        return len(self.expression)

    def __enter__(self) -> FaceTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def identity(self) -> np.ndarray:
        """Each row's identity name (object array of str)."""
        return np.array(self.identities, dtype=object)[self.identity_index]

    @property
    def source(self) -> np.ndarray:
        """Each row's source path (object array of str)."""
        return np.array(self.sources, dtype=object)[self.source_index]

    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.images.size if self.images is not None else None

    def completed_sources(self) -> list[str]:
        """Sources this table finished: recorded by parts; otherwise every source with a row or a failure."""
        if self.done is not None:
            return list(self.done)
        return list(dict.fromkeys([*self.sources, *(source for source, _ in self.failures)]))

    def close(self) -> None:
        if self.images is not None:
            self.images.close()


def index_names(names: Iterable[str], index: dict[str, int] | None = None) -> np.ndarray:
    """Codes of ``names`` in ``index``, adding new names in order of first appearance."""
    index = {} if index is None else index
    return np.array([index.setdefault(name, len(index)) for name in names], np.int32)


def rows_table(rows: FaceRows, done: Sequence[str], failures: Sequence[tuple[str, str]],
               stamps: dict[str, str] | None = None) -> FaceTable:
    identities: dict[str, int] = {}
    sources: dict[str, int] = {}
    identity_index, source_index = index_names(rows.identity, identities), index_names(rows.source, sources)
    return FaceTable(list(identities), identity_index, list(sources), source_index, rows.expression, rows.face,
                     rows.synthetic, rows.extra, [(str(s), str(r)) for s, r in failures], done=list(done),
                     stamps={source: stamps[source] for source in done if source in (stamps or {})})


def _last_completions(tables: Sequence[FaceTable]) -> dict[str, int]:
    """Each source -> the last of ``tables`` that completes it: a resumed run reads again an image
    that changed or could not be read, and that table's outcome (rows, failure, stamp) stands."""
    return {source: number for number, table in enumerate(tables) for source in table.completed_sources()}


def latest_rows(tables: Sequence[FaceTable]) -> list[np.ndarray]:
    """Each table's row numbers, less the rows of sources a later table completes again."""
    last = _last_completions(tables)
    kept: list[np.ndarray] = []
    for number, table in enumerate(tables):
        replaced = np.array([last.get(source, number) != number for source in table.sources], bool)
        kept.append(np.flatnonzero(~replaced[table.source_index]) if replaced.any() else np.arange(len(table)))
    return kept


def concat_tables(tables: Sequence[FaceTable], kept: Sequence[np.ndarray] | None = None) -> FaceTable:
    """Tables one after the other, identity and source indices remapped so names keep their order of
    first appearance. One run's parts are joined with ``kept`` = :func:`latest_rows`: a source
    completed again replaces its earlier rows, failure and stamp. Without ``kept`` every row and
    failure is joined: merging the outputs of different inputs, which may share relative names. The
    result has no images: callers copy or reference those per table, the rows ``kept`` says."""
    last = _last_completions(tables)
    everything = kept is None
    kept = [np.arange(len(table)) for table in tables] if kept is None else kept
    filled = [_rows_of(table, rows) for table, rows in zip(tables, kept) if len(rows)]
    check_same_extras([table.extra for table in filled])
    identities: dict[str, int] = {}
    sources: dict[str, int] = {}
    identity_index = [index_names(t.identities, identities)[t.identity_index] for t in filled]
    source_index = [index_names(t.sources, sources)[t.source_index] for t in filled]

    def joined(columns: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate([np.zeros(0, dtype), *columns]).astype(dtype)

    def standing(number: int, source: str) -> bool:
        return everything or last.get(source, number) == number

    return FaceTable(
        identities=list(identities),
        identity_index=joined(identity_index, np.int32),
        sources=list(sources),
        source_index=joined(source_index, np.int32),
        expression=joined([t.expression for t in filled], np.int8),
        face=joined([t.face for t in filled], np.int16),
        synthetic=joined([t.synthetic for t in filled], bool),
        extra={name: np.concatenate([t.extra[name] for t in filled]) for name in (filled[0].extra if filled else {})},
        failures=[failure for number, table in enumerate(tables) for failure in table.failures
                  if standing(number, failure[0])],
        paths=[path for t in filled for path in t.paths] if all(t.paths is not None for t in filled) else None,
        done=list(dict.fromkeys(source for table in tables for source in table.completed_sources())),
        stamps={source: stamp for number, table in enumerate(tables) for source, stamp in table.stamps.items()
                if last.get(source, number) == number},
    )


def _rows_of(table: FaceTable, rows: np.ndarray) -> FaceTable:
    """``table``'s metadata for ``rows`` only (ascending), names no kept row uses left out."""
    if len(rows) == len(table):
        return table

    def used(names: list[str], index: np.ndarray) -> tuple[list[str], np.ndarray]:
        codes, first = np.unique(index[rows], return_index=True)
        order = codes[np.argsort(first)]  # the names in order of first appearance among the rows
        remap = np.zeros(len(names), np.int32)
        remap[order] = np.arange(len(order))
        return [names[code] for code in order], remap[index[rows]]

    identities, identity_index = used(table.identities, table.identity_index)
    sources, source_index = used(table.sources, table.source_index)
    return FaceTable(identities, identity_index, sources, source_index, table.expression[rows], table.face[rows],
                     table.synthetic[rows], {name: values[rows] for name, values in table.extra.items()},
                     table.failures, paths=[table.paths[row] for row in rows] if table.paths is not None else None)


def size_from_attrs(attrs: dict[str, Any]) -> tuple[int, int]:
    size = attrs.get("size", 0)
    height, width = (size, size) if isinstance(size, int) else size
    return int(height), int(width)
