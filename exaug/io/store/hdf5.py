"""The HDF5 form of a face table (the layout in docs/DESIGN.md): reading and writing the columns and
attributes, the *master* over an unfinished run's parts, and the final self-contained file."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from exaug.errors import InputError
from exaug.expressions import EXPRESSIONS
from exaug.io.atomic import replacing
from exaug.io.store.image_columns import H5Images
from exaug.io.store.rows import TABLE_DATASETS
from exaug.io.store.table import FaceTable, concat_tables, latest_rows, size_from_attrs

HDF5_SUFFIXES = (".h5", ".hdf5")
RESERVED_ATTRS = ("run_key", "json_attrs")  # file attributes the store keeps for itself
_STRING = h5py.string_dtype()
_COMPRESSION = {"compression": "gzip", "compression_opts": 4}
_CHUNK_BYTES = 256 * 1024  # small enough that reading one random face decompresses little
_COPY_ROWS = 256  # rows held in memory at a time while consolidating


@contextmanager
def writing_h5(path: Path) -> Iterator[h5py.File]:
    """A new HDF5 file that replaces ``path`` whole (:func:`~exaug.io.atomic.replacing`). HDF5
    reports a failed write (a full disk) as a RuntimeError when the file closes; it is raised as
    the OSError it is, which ``replacing`` turns into one line naming ``path``."""
    with replacing(path) as temporary:
        try:
            with h5py.File(temporary, "w") as h5:
                yield h5
        except RuntimeError as err:
            code = re.search(r"errno = (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from err


def write_strings(h5: h5py.File, name: str, strings: Sequence[str]) -> None:
    h5.create_dataset(name, data=np.array(list(strings), dtype=object).reshape(-1), dtype=_STRING)


def read_strings(h5: h5py.File, name: str) -> list[str]:
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


def read_header(h5: h5py.File) -> tuple[dict[str, Any], dict[str, Any] | None]:
    encoded = set(json.loads(h5.attrs.get("json_attrs", "[]")))
    attrs = {name: json.loads(value) if name in encoded else _plain(value)
             for name, value in h5.attrs.items() if name not in RESERVED_ATTRS}
    run_key = h5.attrs.get("run_key")
    return attrs, json.loads(run_key) if run_key is not None else None


def _plain(value: Any) -> Any:
    """numpy scalars and arrays from h5py as the Python values they were written from."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def write_columns(h5: h5py.File, table: FaceTable, *, compress: bool) -> None:
    """Every column of the contract except ``images``: the same in parts, masters and final files."""
    numeric = {"identity": table.identity_index, "source": table.source_index, "expression": table.expression,
               "face": table.face, "synthetic": table.synthetic, **table.extra}
    for name, values in numeric.items():
        h5.create_dataset(name, data=values, **(_chunked(values.shape, values.dtype) if compress else {}))
    write_strings(h5, "identities", table.identities)
    write_strings(h5, "sources", table.sources)
    write_strings(h5, "failed_sources", [source for source, _ in table.failures])
    write_strings(h5, "failure_reasons", [reason for _, reason in table.failures])
    done = table.completed_sources()
    write_strings(h5, "done_sources", done)
    write_strings(h5, "source_stamps", [table.stamps.get(source, "") for source in done])


def check_contained(h5: h5py.File, path: Path) -> None:
    """Refuse a table whose data lives outside it. External storage, external links and virtual
    datasets let an HDF5 file name any local file, whose bytes reading would then copy into an
    output. The one exception is exaug's own unfinished master: images virtual over its parts."""
    parts = path.parent.resolve() / f"{path.name}.parts"
    for name in h5:
        link = h5.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise InputError(f"{path}: {name!r} links to another file ({link.filename}); exaug reads only "
                             "self-contained tables")
        dataset = h5[name]
        if not isinstance(dataset, h5py.Dataset):
            continue
        if dataset.external:
            raise InputError(f"{path}: {name!r} is stored in other files ({dataset.external[0][0]}); exaug reads "
                             "only self-contained tables")
        if dataset.is_virtual and not (name == "images" and all(
                (path.parent / source.file_name).resolve().parent == parts and source.dset_name.strip("/") == "images"
                for source in dataset.virtual_sources())):
            raise InputError(f"{path}: {name!r} is a virtual dataset over other files; exaug reads only "
                             "self-contained tables (and its own unfinished outputs)")


def read_h5_table(path: Path) -> FaceTable:
    with h5py.File(path, "r") as h5:
        check_contained(h5, path)
        attrs, run_key = read_header(h5)
        return FaceTable(
            identities=read_strings(h5, "identities"), identity_index=h5["identity"][()],
            sources=read_strings(h5, "sources"), source_index=h5["source"][()],
            expression=h5["expression"][()], face=h5["face"][()], synthetic=h5["synthetic"][()],
            extra={name: h5[name][()] for name in h5 if name not in TABLE_DATASETS},
            failures=list(zip(read_strings(h5, "failed_sources"), read_strings(h5, "failure_reasons"))),
            attrs=attrs, run_key=run_key,
            images=H5Images(path, h5["images"].shape) if "images" in h5 else None,
            paths=read_strings(h5, "path") if "path" in h5 else None,
            done=read_strings(h5, "done_sources") if "done_sources" in h5 else None,
            stamps={source: stamp for source, stamp in zip(read_strings(h5, "done_sources"),
                                                             read_strings(h5, "source_stamps")) if stamp},
        )


def _image_size(tables: Sequence[FaceTable], attrs: dict[str, Any]) -> tuple[int, int]:
    """The faces' (height, width): from the first table that knows it, else ``attrs['size']``."""
    return next((table.image_size for table in tables if table.image_size), None) or size_from_attrs(attrs)


def write_final(path: Path, tables: Sequence[FaceTable], attrs: dict[str, Any], run_key: dict[str, Any], *,
                latest: bool = True) -> None:
    """One self-contained, compressed file holding ``tables`` in order: consolidation (a run's parts:
    ``latest``, see :func:`~exaug.io.store.table.concat_tables`) and merge (whole outputs)."""
    kept = latest_rows(tables) if latest else None
    joined = concat_tables(tables, kept)
    copied = kept if kept is not None else [np.arange(len(table)) for table in tables]
    shape = (len(joined), *_image_size(tables, attrs), 3)
    with writing_h5(path) as h5:
        _write_header(h5, attrs, run_key)
        write_columns(h5, joined, compress=True)
        images = h5.create_dataset("images", shape=shape, dtype=np.uint8, **_chunked(shape, np.uint8))
        offset = 0
        for table, rows in zip(tables, copied):
            for start, stop in row_runs(rows):
                for first in range(start, stop, _COPY_ROWS):
                    block = table.images[first:min(first + _COPY_ROWS, stop)]
                    images[offset:offset + len(block)] = block
                    offset += len(block)


def write_master(path: Path, ledger: FaceTable, parts: Sequence[tuple[Path, int]], kept: Sequence[np.ndarray],
                 size: tuple[int, int], attrs: dict[str, Any], run_key: dict[str, Any]) -> None:
    """The visible output of an unfinished HDF5 run: real small columns, ``images`` a virtual dataset
    over the part files (relative paths, so it opens from any working directory): of each part
    (file, rows), the rows ``kept`` says, which the ``ledger`` lists."""
    shape = (len(ledger), *size, 3)
    with writing_h5(path) as h5:
        _write_header(h5, attrs, run_key)
        write_columns(h5, ledger, compress=False)
        if not len(ledger):
            h5.create_dataset("images", shape=shape, dtype=np.uint8)
            return
        layout = h5py.VirtualLayout(shape=shape, dtype=np.uint8)
        offset = 0
        for (part, count), rows in zip(parts, kept):
            if not len(rows):
                continue
            source = h5py.VirtualSource(os.path.relpath(part, path.parent), "images", shape=(count, *shape[1:]))
            for start, stop in row_runs(rows):
                layout[offset:offset + stop - start] = source[start:stop]
                offset += stop - start
        h5.create_virtual_dataset("images", layout)


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Ascending row numbers as (start, stop) runs of consecutive rows: one slice each."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, stops = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1
    return list(zip(starts.tolist(), stops.tolist()))
