"""Resumable, crash-safe face tables: what ``exaug align`` and ``exaug augment`` write through.

Runs over large datasets get killed (SIGKILL, preemption, Ctrl-C), so a writer commits whole
sources at a time as an atomic *part* (``<output>.parts/`` beside an HDF5 output,
``<output>/.exaug-parts/`` inside a folder output) and then republishes the visible output
atomically: an HDF5 *master* whose ``images`` is a virtual dataset over the parts, or the PNGs'
``manifest.csv``. A killed run therefore leaves an output that opens and holds every committed part,
and the parts are the truth a resumed run starts from. ``finish()`` consolidates (HDF5: one
self-contained compressed file) and removes the parts.

Parts, masters and final files share one HDF5 table layout (the contract in docs/DESIGN.md), so the
same code writes all three, and consolidating parts is the same operation as merging finished
outputs. Republishing rewrites every small column, so it costs O(rows so far): commit batches of
many sources, not single faces. Extra columns are whatever the first non-empty batch had; an empty
output has no extra columns and takes its image size from ``attrs['size']`` (an int for square faces
or ``[height, width]``; ``(0, 0)`` when missing).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
from PIL import Image

from exaug.errors import ExaugError, InputError
from exaug.io.atomic import replacing
from exaug.expressions import EXPRESSIONS

HDF5_SUFFIXES = (".h5", ".hdf5")
_STRING = h5py.string_dtype()
_COMPRESSION = {"compression": "gzip", "compression_opts": 4}
_CHUNK_BYTES = 256 * 1024  # small enough that reading one random face decompresses little
_COPY_ROWS = 256  # rows held in memory at a time while consolidating
_FOLDER_PARTS = ".exaug-parts"
_FOLDER_INFO = "exaug.json"  # run key, attrs, extra-column shapes; also marks a folder as exaug's own
_PNG_THREADS = 8
_MANIFEST_COLUMNS = ("path", "identity", "expression", "synthetic", "source", "face")
_RESERVED_ATTRS = ("run_key", "json_attrs")
_TABLE_DATASETS = frozenset({"images", "identity", "identities", "source", "sources", "expression", "face",
                             "synthetic", "failed_sources", "failure_reasons", "path", "done_sources"})


# ---------------------------------------------------------------------------------------------- rows


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
        if clash := _TABLE_DATASETS.intersection(self.extra):
            raise ValueError(f"extra column names {sorted(clash)} are taken by the table's own columns")
        if (self.synthetic & (self.expression < 0)).any():
            raise ValueError("a synthetic face needs the expression it was generated with")

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
        _check_same_extras([batch.extra for batch in filled])
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


def _check_same_extras(extras: Sequence[dict[str, np.ndarray]]) -> None:
    """Rows from different batches end up in one dataset per column, so the columns must agree."""
    specs = [{name: (str(values.dtype), values.shape[1:]) for name, values in extra.items()} for extra in extras]
    for spec in specs[1:]:
        if spec != specs[0]:
            raise ValueError(f"extra columns differ between batches: {specs[0]} != {spec}")


# --------------------------------------------------------------------------------------------- tables


class _ImageColumn(ABC):
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


class _H5Images(_ImageColumn):
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
        dataset = self._dataset()
        if (np.diff(rows) == 1).all():
            return dataset[rows[0]:rows[-1] + 1]
        unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
        return dataset[unique][inverse]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": 0}


class _PngImages(_ImageColumn):
    """PNGs of a folder table, listed by the manifest."""

    def __init__(self, root: Path, paths: list[str], size: tuple[int, int] | None):
        super().__init__(len(paths))
        self.root = root
        self.paths = paths
        if paths:
            with Image.open(root / paths[0]) as first:
                size = (first.height, first.width)
        self.size = size

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return self._empty()
        return np.stack([self._load(row) for row in rows])

    def _load(self, row: int) -> np.ndarray:
        with Image.open(self.root / self.paths[row]) as image:
            return np.asarray(image.convert("RGB"))


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
    images: _ImageColumn | None = None  # None only for the writer's in-memory ledger
    paths: list[str] | None = None  # folder form: each row's PNG, relative to the folder
    done: list[str] | None = None  # parts record the sources they complete; else derived

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


def _index_names(names: Iterable[str], index: dict[str, int] | None = None) -> np.ndarray:
    """Codes of ``names`` in ``index``, adding new names in order of first appearance."""
    index = {} if index is None else index
    return np.array([index.setdefault(name, len(index)) for name in names], np.int32)


def _rows_table(rows: FaceRows, done: Sequence[str], failures: Sequence[tuple[str, str]]) -> FaceTable:
    identities: dict[str, int] = {}
    sources: dict[str, int] = {}
    identity_index, source_index = _index_names(rows.identity, identities), _index_names(rows.source, sources)
    return FaceTable(list(identities), identity_index, list(sources), source_index, rows.expression, rows.face,
                     rows.synthetic, rows.extra, [(str(s), str(r)) for s, r in failures], done=list(done))


def _concat_tables(tables: Sequence[FaceTable]) -> FaceTable:
    """Tables one after the other, identity and source indices remapped so names keep their order of
    first appearance. The result has no images: callers copy or reference those per table."""
    filled = [table for table in tables if len(table)]
    _check_same_extras([table.extra for table in filled])
    identities: dict[str, int] = {}
    sources: dict[str, int] = {}
    identity_index = [_index_names(t.identities, identities)[t.identity_index] for t in filled]
    source_index = [_index_names(t.sources, sources)[t.source_index] for t in filled]

    def joined(columns: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate([np.zeros(0, dtype), *columns]).astype(dtype)

    return FaceTable(
        identities=list(identities),
        identity_index=joined(identity_index, np.int32),
        sources=list(sources),
        source_index=joined(source_index, np.int32),
        expression=joined([t.expression for t in filled], np.int8),
        face=joined([t.face for t in filled], np.int16),
        synthetic=joined([t.synthetic for t in filled], bool),
        extra={name: np.concatenate([t.extra[name] for t in filled]) for name in (filled[0].extra if filled else {})},
        failures=[failure for table in tables for failure in table.failures],
        paths=[path for t in filled for path in t.paths] if all(t.paths is not None for t in filled) else None,
        done=list(dict.fromkeys(source for table in tables for source in table.completed_sources())),
    )


# ----------------------------------------------------------------------------------------- file I/O


def _write_strings(h5: h5py.File, name: str, strings: Sequence[str]) -> None:
    h5.create_dataset(name, data=np.array(list(strings), dtype=object).reshape(-1), dtype=_STRING)


def _read_strings(h5: h5py.File, name: str) -> list[str]:
    return h5[name].asstr()[()].tolist() if name in h5 else []


def _chunked(shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    """Compression settings for a final-file column; an empty column stays contiguous (HDF5 cannot
    chunk a zero-length dimension)."""
    if not shape[0]:
        return {}
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = int(np.clip(_CHUNK_BYTES // max(row_bytes, 1), 1, shape[0]))
    return {"chunks": (rows, *shape[1:]), **_COMPRESSION}


def _write_header(h5: h5py.File, attrs: dict[str, Any], run_key: dict[str, Any]) -> None:
    """File attributes: plain scalars and strings as they are, anything else JSON-encoded and named
    in ``json_attrs`` so reading gives back what was written."""
    attrs = {name: value for name, value in attrs.items() if name != "expressions"}  # always the canonical list
    encoded = [name for name, value in attrs.items() if not isinstance(value, (str, int, float, bool))]
    for name, value in attrs.items():
        h5.attrs[name] = json.dumps(value) if name in encoded else value
    h5.attrs.create("expressions", list(EXPRESSIONS), dtype=_STRING)
    h5.attrs["run_key"] = json.dumps(run_key)
    h5.attrs["json_attrs"] = json.dumps(encoded)


def _read_header(h5: h5py.File) -> tuple[dict[str, Any], dict[str, Any] | None]:
    encoded = set(json.loads(h5.attrs.get("json_attrs", "[]")))
    attrs = {name: json.loads(value) if name in encoded else _plain(value)
             for name, value in h5.attrs.items() if name not in _RESERVED_ATTRS}
    run_key = h5.attrs.get("run_key")
    return attrs, json.loads(run_key) if run_key is not None else None


def _plain(value: Any) -> Any:
    """numpy scalars and arrays from h5py as the Python values they were written from."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def _write_columns(h5: h5py.File, table: FaceTable, *, compress: bool) -> None:
    """Every column of the contract except ``images``: the same in parts, masters and final files."""
    numeric = {"identity": table.identity_index, "source": table.source_index, "expression": table.expression,
               "face": table.face, "synthetic": table.synthetic, **table.extra}
    for name, values in numeric.items():
        h5.create_dataset(name, data=values, **(_chunked(values.shape, values.dtype) if compress else {}))
    _write_strings(h5, "identities", table.identities)
    _write_strings(h5, "sources", table.sources)
    _write_strings(h5, "failed_sources", [source for source, _ in table.failures])
    _write_strings(h5, "failure_reasons", [reason for _, reason in table.failures])


def _read_h5_table(path: Path) -> FaceTable:
    with h5py.File(path, "r") as h5:
        attrs, run_key = _read_header(h5)
        return FaceTable(
            identities=_read_strings(h5, "identities"), identity_index=h5["identity"][()],
            sources=_read_strings(h5, "sources"), source_index=h5["source"][()],
            expression=h5["expression"][()], face=h5["face"][()], synthetic=h5["synthetic"][()],
            extra={name: h5[name][()] for name in h5 if name not in _TABLE_DATASETS},
            failures=list(zip(_read_strings(h5, "failed_sources"), _read_strings(h5, "failure_reasons"))),
            attrs=attrs, run_key=run_key,
            images=_H5Images(path, h5["images"].shape) if "images" in h5 else None,
            paths=_read_strings(h5, "path") if "path" in h5 else None,
            done=_read_strings(h5, "done_sources") if "done_sources" in h5 else None,
        )


def _size_from_attrs(attrs: dict[str, Any]) -> tuple[int, int]:
    size = attrs.get("size", 0)
    height, width = (size, size) if isinstance(size, int) else size
    return int(height), int(width)


def _image_size(tables: Sequence[FaceTable], attrs: dict[str, Any]) -> tuple[int, int]:
    """The faces' (height, width): from the first table that knows it, else ``attrs['size']``."""
    return next((table.image_size for table in tables if table.image_size), None) or _size_from_attrs(attrs)


def _write_final(path: Path, tables: Sequence[FaceTable], attrs: dict[str, Any], run_key: dict[str, Any]) -> None:
    """One self-contained, compressed file holding ``tables`` in order: consolidation and merge."""
    joined = _concat_tables(tables)
    shape = (len(joined), *_image_size(tables, attrs), 3)
    with replacing(path) as temporary, h5py.File(temporary, "w") as h5:
        _write_header(h5, attrs, run_key)
        _write_columns(h5, joined, compress=True)
        images = h5.create_dataset("images", shape=shape, dtype=np.uint8, **_chunked(shape, np.uint8))
        offset = 0
        for table in tables:
            for start in range(0, len(table), _COPY_ROWS):
                block = table.images[start:start + _COPY_ROWS]
                images[offset:offset + len(block)] = block
                offset += len(block)


def _write_master(path: Path, ledger: FaceTable, parts: Sequence[tuple[Path, int]], size: tuple[int, int],
                  attrs: dict[str, Any], run_key: dict[str, Any]) -> None:
    """The visible output of an unfinished HDF5 run: real small columns, ``images`` a virtual dataset
    over the part files (relative paths, so it opens from any working directory)."""
    shape = (len(ledger), *size, 3)
    with replacing(path) as temporary, h5py.File(temporary, "w") as h5:
        _write_header(h5, attrs, run_key)
        _write_columns(h5, ledger, compress=False)
        if not len(ledger):
            h5.create_dataset("images", shape=shape, dtype=np.uint8)
            return
        layout = h5py.VirtualLayout(shape=shape, dtype=np.uint8)
        offset = 0
        for part, rows in parts:
            if rows:
                relative = os.path.relpath(part, path.parent)
                layout[offset:offset + rows] = h5py.VirtualSource(relative, "images", shape=(rows, *shape[1:]))
                offset += rows
        h5.create_virtual_dataset("images", layout)


def _remove_tree(folder: Path) -> None:
    """Rename first, so a folder is either whole or gone even if deletion is interrupted."""
    doomed = folder.with_name(folder.name + ".deleting")
    if doomed.exists():
        shutil.rmtree(doomed)
    if folder.exists():
        os.replace(folder, doomed)
        shutil.rmtree(doomed)


# ---------------------------------------------------------------------------------------- folder form


def _manifest_cell(values: np.ndarray) -> list[str]:
    """One extra column as CSV cells: each row's numbers space-separated, floats with enough digits
    to read back bit-exact."""
    flat = values.reshape(len(values), -1)
    if np.issubdtype(flat.dtype, np.floating):
        text = np.char.mod(f"%.{np.finfo(flat.dtype).precision + 3}g", flat)
    else:
        text = flat.astype(np.int64).astype(str)
    return [" ".join(row) for row in text]


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with replacing(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _read_folder_table(root: Path) -> FaceTable:
    info = json.loads((root / _FOLDER_INFO).read_text()) if (root / _FOLDER_INFO).is_file() else {}
    rows = _read_csv(root / "manifest.csv")
    failures = _read_csv(root / "failures.csv") if (root / "failures.csv").is_file() else []
    identities: dict[str, int] = {}
    sources: dict[str, int] = {}
    attrs = info.get("attrs", {})
    paths = [row["path"] for row in rows]
    return FaceTable(
        identity_index=_index_names((row["identity"] for row in rows), identities), identities=list(identities),
        source_index=_index_names((row["source"] for row in rows), sources), sources=list(sources),
        expression=np.array([EXPRESSIONS.index(row["expression"]) if row["expression"] else -1 for row in rows],
                            np.int8),
        face=np.array([int(row["face"]) for row in rows], np.int16),
        synthetic=np.array([row["synthetic"] == "true" for row in rows], bool),
        extra={name: np.array([row[name].split() for row in rows], spec["dtype"]).reshape(-1, *spec["shape"])
               for name, spec in info.get("columns", {}).items()},
        failures=[(row["source"], row["reason"]) for row in failures],
        attrs=attrs, run_key=info.get("run_key"),
        images=_PngImages(root, paths, _size_from_attrs(attrs) if "size" in attrs else None), paths=paths,
    )


def _save_png(path: Path, image: np.ndarray) -> None:
    with replacing(path) as temporary:
        Image.fromarray(image).save(temporary, format="PNG")


def _folder_name(identity: str, expression: int) -> str:
    """An identity as one safe path component; no identity files faces under their expression."""
    if not identity:
        return EXPRESSIONS[expression] if expression >= 0 else "_unknown"
    name = identity.replace("/", "_").replace("\\", "_")
    return "_" + name if name.startswith(".") else name  # never hidden, never "..", never the parts folder


def _png_paths(rows: FaceRows, taken: set[str]) -> list[str]:
    """``<identity>/<source stem>_f<face>_<original|expression>.png``; a name already taken (two
    sources with one stem) gets ``-2``, ``-3``... after the stem, the same on every resume."""
    paths = []
    for identity, source, face, expression, synthetic in zip(rows.identity, rows.source, rows.face.tolist(),
                                                              rows.expression.tolist(), rows.synthetic.tolist()):
        folder, stem = _folder_name(identity, expression), PurePosixPath(source).stem
        suffix = EXPRESSIONS[expression] if synthetic else "original"
        path, copy = f"{folder}/{stem}_f{face}_{suffix}.png", 1
        while path in taken:
            copy += 1
            path = f"{folder}/{stem}-{copy}_f{face}_{suffix}.png"
        taken.add(path)
        paths.append(path)
    return paths


# -------------------------------------------------------------------------------------------- writers


class FaceWriter(ABC):
    """Commits parts and republishes the visible output after each (see the module docstring).

    Leaving a ``with`` block normally finishes the output; leaving it by an exception keeps the
    parts, so the next run with the same run key resumes where this one stopped."""

    def __init__(self, output: Path, *, run_key: dict[str, Any], attrs: dict[str, Any], overwrite: bool):
        if reserved := set(_RESERVED_ATTRS).intersection(attrs):
            raise ValueError(f"attrs may not use the reserved names {sorted(reserved)}")
        self.output = output
        self.run_key: dict[str, Any] = json.loads(json.dumps(run_key))  # as it reads back from disk
        self.attrs = dict(attrs)
        self._ledger = _concat_tables([])  # metadata of every committed row, in commit order
        self._parts: list[tuple[Path, int]] = []  # (part file, rows)
        self._done: set[str] = set()
        self._size: tuple[int, int] | None = None  # (height, width) of the committed faces
        self._finished: FaceTable | None = None  # this run key's finished output, until commit adopts it
        self._closed = False
        if overwrite:
            self._remove_output()
        self._remove_leftovers()
        self._open_existing()

    @property
    @abstractmethod
    def parts_dir(self) -> Path:
        """Where parts and run.json live until finish()."""

    @property
    def done_sources(self) -> set[str]:
        """Sources an earlier run with this run key completed (with rows, none, or a failure)."""
        return set(self._done)

    def __enter__(self) -> FaceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.finish()

    def commit(self, rows: FaceRows, done: Sequence[str], failures: Sequence[tuple[str, str]] = ()) -> None:
        """Atomically add ``rows`` and mark ``done`` complete; a failed source counts as done too.
        Commit whole sources: every row's source must be in ``done``."""
        if self._closed:
            raise RuntimeError(f"{self.output}: commit after finish()")
        if self._finished is not None:
            self._adopt_finished()
        table = _rows_table(rows, list(dict.fromkeys([*done, *(source for source, _ in failures)])), failures)
        self._check_commit(rows, table.completed_sources())
        table.paths = self._row_paths(rows)
        self._append_part(table, lambda h5: self._store_images(h5, rows, table))
        if len(rows):
            self._size = self._size or (rows.images.shape[1], rows.images.shape[2])
        self._publish()

    def finish(self) -> None:
        """Make the output final and self-contained, then remove the parts. Does nothing the second
        time, nor to an output this run key had already finished."""
        if self._closed:
            return
        if self._finished is None:
            self._finalize()
            _remove_tree(self.parts_dir)
        else:
            self._finished.close()
        self._closed = True

    # -- opening

    def _open_existing(self) -> None:
        run_file = self.parts_dir / "run.json"
        if run_file.is_file():
            self._check_run_key(json.loads(run_file.read_text()), "was started with")
            self._load_parts()
        elif self._output_exists():
            self._check_run_key(self._existing_run_key(), "was written with")
            self._finished = read_faces(self.output)
            self._done = set(self._finished.completed_sources())

    def _check_run_key(self, found: dict[str, Any] | None, how: str) -> None:
        if found == self.run_key:
            return
        if found is None:
            reason = "exists and was not written by exaug"
        else:
            keys = found.keys() | self.run_key.keys()
            differing = sorted(key for key in keys if found.get(key) != self.run_key.get(key))
            reason = f"{how} different settings ({', '.join(differing)})"
        raise ExaugError(f"{self.output} {reason}; pass --overwrite to replace it, or choose another output")

    def _remove_leftovers(self) -> None:
        """Temporary files and half-deleted folders of a run that was killed."""
        for leftover in self._leftovers():
            leftover.unlink(missing_ok=True)
        if not (self.parts_dir / "run.json").exists():
            _remove_tree(self.parts_dir)  # killed while starting: it holds no part

    def _load_parts(self) -> None:
        parts = sorted(self.parts_dir.glob("part-*.h5"), key=lambda part: int(part.stem.split("-")[1]))
        tables = [_read_h5_table(part) for part in parts]
        self._ledger = _concat_tables(tables)
        self._parts = [(part, len(table)) for part, table in zip(parts, tables)]
        self._done = set(self._ledger.completed_sources())
        self._size = next((table.image_size for table in tables if len(table) and table.image_size), None)
        self._publish()

    def _adopt_finished(self) -> None:
        """New sources for a finished output: its rows become the first part and the run goes on."""
        finished, self._finished = self._finished, None
        finished.close()
        self._start_parts()
        self._adopt(finished)
        self._size = finished.image_size if len(finished) else None
        self._publish()

    # -- committing

    def _check_commit(self, rows: FaceRows, completed: list[str]) -> None:
        """Everything that could make a part unusable is checked before the part is written."""
        if again := self._done.intersection(completed):
            raise ValueError(f"sources committed before: {sorted(again)[:5]}")
        if partial := set(rows.source).difference(completed):
            raise ValueError(f"rows of sources not in done (commit whole sources): {sorted(partial)[:5]}")
        size = (rows.images.shape[1], rows.images.shape[2])
        if len(rows) and self._size and size != self._size:
            raise ValueError(f"faces are {size[0]}x{size[1]}, earlier ones {self._size[0]}x{self._size[1]}")
        if len(rows) and len(self._ledger):
            _check_same_extras([self._ledger.extra, rows.extra])

    def _start_parts(self) -> None:
        run_file = self.parts_dir / "run.json"
        if not run_file.exists():
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            with replacing(run_file) as temporary:
                temporary.write_text(json.dumps(self.run_key))

    def _append_part(self, table: FaceTable, store_images: Callable[[h5py.File], None]) -> None:
        self._start_parts()
        part = self.parts_dir / f"part-{len(self._parts):05d}.h5"
        with replacing(part) as temporary, h5py.File(temporary, "w") as h5:
            _write_columns(h5, table, compress=False)
            _write_strings(h5, "done_sources", table.completed_sources())
            if table.paths is not None:
                _write_strings(h5, "path", table.paths)
            store_images(h5)
        self._register(part, table)

    def _register(self, part: Path, table: FaceTable) -> None:
        self._ledger = _concat_tables([self._ledger, table])
        self._parts.append((part, len(table)))
        self._done.update(table.completed_sources())

    # -- what differs between the forms

    @abstractmethod
    def _output_exists(self) -> bool:
        """Whether something is at ``output`` already."""

    @abstractmethod
    def _existing_run_key(self) -> dict[str, Any] | None:
        """The run key of the output at ``output``; None when exaug did not write it."""

    @abstractmethod
    def _remove_output(self) -> None:
        """Delete the output and its parts (``overwrite``)."""

    @abstractmethod
    def _leftovers(self) -> list[Path]:
        """Temporary files a killed run left behind."""

    @abstractmethod
    def _adopt(self, finished: FaceTable) -> None:
        """Make the finished output the first part."""

    @abstractmethod
    def _row_paths(self, rows: FaceRows) -> list[str] | None:
        """Where each row's image file goes, when images are files."""

    @abstractmethod
    def _store_images(self, h5: h5py.File, rows: FaceRows, table: FaceTable) -> None:
        """Store the images of a part being written to ``h5``."""

    @abstractmethod
    def _publish(self) -> None:
        """Replace the visible output with one holding every committed part."""

    @abstractmethod
    def _finalize(self) -> None:
        """Write the final output from the parts."""


class _H5Writer(FaceWriter):
    """Parts hold the images; the output is a master over them until one consolidated file."""

    @property
    def parts_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".parts")

    def _output_exists(self) -> bool:
        return self.output.exists()

    def _existing_run_key(self) -> dict[str, Any] | None:
        try:
            with h5py.File(self.output, "r") as h5:
                return _read_header(h5)[1]
        except OSError:  # not an HDF5 file
            return None

    def _remove_output(self) -> None:
        self.output.unlink(missing_ok=True)
        _remove_tree(self.parts_dir)

    def _leftovers(self) -> list[Path]:
        return [self.output.with_name(f".{self.output.name}.tmp"), *self.parts_dir.glob(".*.tmp")]

    def _adopt(self, finished: FaceTable) -> None:
        part = self.parts_dir / "part-00000.h5"
        os.replace(self.output, part)  # a final file is a valid part
        self._register(part, _read_h5_table(part))

    def _row_paths(self, rows: FaceRows) -> None:
        return None

    def _store_images(self, h5: h5py.File, rows: FaceRows, table: FaceTable) -> None:
        if len(rows):
            h5.create_dataset("images", data=rows.images)

    def _publish(self) -> None:
        size = self._size or _size_from_attrs(self.attrs)
        _write_master(self.output, self._ledger, self._parts, size, self.attrs, self.run_key)

    def _finalize(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tables = [_read_h5_table(part) for part, _ in self._parts]
        try:
            _write_final(self.output, tables, self.attrs, self.run_key)
        finally:
            for table in tables:
                table.close()


class _FolderWriter(FaceWriter):
    """PNGs go straight to their final place; parts hold the metadata; manifest.csv lists them."""

    @property
    def parts_dir(self) -> Path:
        return self.output / _FOLDER_PARTS

    def _output_exists(self) -> bool:
        return self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir()))

    def _existing_run_key(self) -> dict[str, Any] | None:
        info = self.output / _FOLDER_INFO
        return json.loads(info.read_text()).get("run_key") if info.is_file() else None

    def _remove_output(self) -> None:
        if self._output_exists() and not (self.output / _FOLDER_INFO).is_file() and not self.parts_dir.is_dir():
            raise ExaugError(f"{self.output} exists and was not written by exaug; --overwrite will not delete it")
        _remove_tree(self.output)

    def _leftovers(self) -> list[Path]:
        return list(self.output.rglob(".*.tmp")) if self.output.is_dir() else []

    def _adopt(self, finished: FaceTable) -> None:
        self._append_part(finished, lambda h5: None)  # its PNGs are already in place

    def _row_paths(self, rows: FaceRows) -> list[str]:
        return _png_paths(rows, set(self._ledger.paths or ()))

    def _store_images(self, h5: h5py.File, rows: FaceRows, table: FaceTable) -> None:
        """Threads: PNG encoding releases the GIL, and concurrent fsyncs share one journal commit."""
        for folder in {(self.output / path).parent for path in table.paths}:
            folder.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(_PNG_THREADS) as pool:
            list(pool.map(_save_png, [self.output / path for path in table.paths], rows.images))

    def _publish(self) -> None:
        """exaug.json first: it says how to read the extra columns the manifest is about to list."""
        ledger = self._ledger
        self.output.mkdir(parents=True, exist_ok=True)
        columns = {name: {"dtype": str(values.dtype), "shape": list(values.shape[1:])}
                   for name, values in ledger.extra.items()}
        with replacing(self.output / _FOLDER_INFO) as temporary:
            temporary.write_text(json.dumps({"run_key": self.run_key, "attrs": self.attrs, "columns": columns},
                                            indent=2))
        _write_csv(self.output / "failures.csv", ("source", "reason"), ledger.failures)
        expression_names = [EXPRESSIONS[index] if index >= 0 else "" for index in ledger.expression.tolist()]
        synthetic = ["true" if flag else "false" for flag in ledger.synthetic.tolist()]
        rows = zip(ledger.paths, ledger.identity, expression_names, synthetic, ledger.source,
                   ledger.face.tolist(), *(_manifest_cell(values) for values in ledger.extra.values()))
        _write_csv(self.output / "manifest.csv", (*_MANIFEST_COLUMNS, *ledger.extra), rows)

    def _finalize(self) -> None:
        self._publish()


def open_writer(output: Path | str, *, run_key: dict[str, Any], attrs: dict[str, Any],
                overwrite: bool = False) -> FaceWriter:
    """A writer for ``output``: an HDF5 file when it ends in .h5/.hdf5, else a folder of PNGs.

    Raises ExaugError when ``output`` holds another run (different ``run_key``) or something exaug
    did not write, unless ``overwrite`` (which never deletes a folder exaug did not write)."""
    output = Path(output)
    writer = _H5Writer if output.suffix.lower() in HDF5_SUFFIXES else _FolderWriter
    return writer(output, run_key=run_key, attrs=attrs, overwrite=overwrite)


# ------------------------------------------------------------------------------------ reading, merge


def is_face_table(path: Path | str) -> bool:
    """Whether ``path`` is an output of align/augment (either form), finished or not."""
    path = Path(path)
    if path.is_dir():  # datasets ship manifest.csv files of their own (CK+ does): exaug.json is ours
        return (path / "manifest.csv").is_file() and (path / _FOLDER_INFO).is_file()
    if not (path.is_file() and h5py.is_hdf5(path)):
        return False
    with h5py.File(path, "r") as h5:
        return "images" in h5 and "identity" in h5


def read_faces(path: Path | str) -> FaceTable:
    """A face table in either form: a final or unfinished HDF5 file, or a folder with manifest.csv."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not is_face_table(path):
        raise InputError(f"{path}: not a face table written by exaug (an .h5 file or a folder with manifest.csv)")
    return _read_folder_table(path) if path.is_dir() else _read_h5_table(path)


def merge(parts: Sequence[Path | str], output: Path | str) -> None:
    """Join finished outputs (e.g. the shards of ``exaug augment --num-shards``) into one HDF5 file:
    rows in the order given, identity and source indices remapped, failures concatenated, attrs of
    the first input plus ``merged_from``."""
    output = Path(output)
    if output.suffix.lower() not in HDF5_SUFFIXES:
        raise ExaugError(f"{output}: merge writes HDF5; name the output .h5 or .hdf5")
    if not parts:
        raise ExaugError("merge: no inputs given")
    tables = [read_faces(part) for part in parts]
    try:
        _check_mergeable(parts, tables)
        attrs = {**tables[0].attrs, "merged_from": [str(part) for part in parts]}
        output.parent.mkdir(parents=True, exist_ok=True)
        _write_final(output, tables, attrs, {"merged": [table.run_key for table in tables]})
    finally:
        for table in tables:
            table.close()


def _check_mergeable(parts: Sequence[Path | str], tables: Sequence[FaceTable]) -> None:
    """Faces from different models or of different sizes would make one table that lies."""
    for what, values in (("model_hash", [table.attrs.get("model_hash") for table in tables]),
                         ("image size", [table.image_size for table in tables])):
        if len({json.dumps(value) for value in values}) > 1:
            listing = ", ".join(f"{part} has {value}" for part, value in zip(parts, values))
            raise ExaugError(f"cannot merge outputs whose {what} differs: {listing}")
