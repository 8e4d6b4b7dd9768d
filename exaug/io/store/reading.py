"""Reading a face table in either form, and merging finished outputs into one HDF5 file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py

from exaug.errors import ExaugError, InputError
from exaug.io.store.folder import FOLDER_INFO, read_folder_table
from exaug.io.store.hdf5 import HDF5_SUFFIXES, read_h5_table, write_final
from exaug.io.store.table import FaceTable


def is_face_table(path: Path | str) -> bool:
    """Whether ``path`` is an output of align/augment (either form), finished or not."""
    path = Path(path)
    if path.is_dir():  # datasets ship manifest.csv files of their own (CK+ does): exaug.json is ours
        return (path / "manifest.csv").is_file() and (path / FOLDER_INFO).is_file()
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
    return read_folder_table(path) if path.is_dir() else read_h5_table(path)


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
        write_final(output, tables, attrs, {"merged": [table.run_key for table in tables]})
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
