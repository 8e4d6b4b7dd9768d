"""The folder form of a face table: one PNG per row, ``manifest.csv`` listing them, ``failures.csv``,
``sources.csv`` (every input image finished, and its file's stamp when read) and ``exaug.json`` (run
key, attrs, extra-column shapes; it also marks a folder as exaug's own)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence, Set as AbstractSet
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from exaug.expressions import EXPRESSIONS, label_index, label_name
from exaug.io.atomic import replacing
from exaug.io.store.image_columns import PngImages
from exaug.io.store.rows import FaceRows
from exaug.io.store.table import FaceTable, index_names, size_from_attrs

FOLDER_PARTS = ".exaug-parts"
FOLDER_INFO = "exaug.json"
MANIFEST_COLUMNS = ("path", "identity", "expression", "synthetic", "source", "face")
SOURCES_FILE = "sources.csv"
SOURCES_COLUMNS = ("source", "bytes", "modified_ns", "sha256")  # a stamp's fields (exaug.io.digest.file_stamp)
# identity folders must not take these names
_OWN_FILES = frozenset({FOLDER_INFO, "manifest.csv", "failures.csv", SOURCES_FILE})
_NAME_BYTES = 160  # a stem or folder this long, plus "-N_fN_<expression>.png" and ".<...>.tmp", fits in 255


def manifest_cell(values: np.ndarray) -> list[str]:
    """One extra column as CSV cells: each row's numbers space-separated, floats with enough digits
    to read back bit-exact."""
    flat = values.reshape(len(values), -1)
    if np.issubdtype(flat.dtype, np.floating):
        text = np.char.mod(f"%.{np.finfo(flat.dtype).precision + 3}g", flat)
    else:
        text = flat.astype(np.int64).astype(str)
    return [" ".join(row) for row in text]


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with replacing(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def source_cells(table: FaceTable) -> list[tuple[str, ...]]:
    """``sources.csv``'s rows: each completed source and its stamp's fields (empty when unknown)."""
    return [(source, *(table.stamps[source].split() if source in table.stamps else ("", "", "")))
            for source in table.completed_sources()]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def read_folder_table(root: Path) -> FaceTable:
    info = json.loads((root / FOLDER_INFO).read_text()) if (root / FOLDER_INFO).is_file() else {}
    rows = _read_csv(root / "manifest.csv")
    failures = _read_csv(root / "failures.csv") if (root / "failures.csv").is_file() else []
    finished = _read_csv(root / SOURCES_FILE) if (root / SOURCES_FILE).is_file() else None  # older outputs: none
    identities: dict[str, int] = {}
    sources: dict[str, int] = {}
    attrs = info.get("attrs", {})
    paths = [row["path"] for row in rows]
    return FaceTable(
        identity_index=index_names((row["identity"] for row in rows), identities), identities=list(identities),
        source_index=index_names((row["source"] for row in rows), sources), sources=list(sources),
        expression=np.array([label_index(row["expression"]) for row in rows], np.int8),
        face=np.array([int(row["face"]) for row in rows], np.int16),
        synthetic=np.array([row["synthetic"] == "true" for row in rows], bool),
        extra={name: np.array([row[name].split() for row in rows], spec["dtype"]).reshape(-1, *spec["shape"])
               for name, spec in info.get("columns", {}).items()},
        failures=[(row["source"], row["reason"]) for row in failures],
        attrs=attrs, run_key=info.get("run_key"),
        images=PngImages(root, paths, size_from_attrs(attrs) if "size" in attrs else None), paths=paths,
        done=[row["source"] for row in finished] if finished is not None else None,
        stamps={row["source"]: " ".join(row[name] for name in SOURCES_COLUMNS[1:])
                for row in finished or () if row["sha256"]},
    )


def _folder_name(identity: str, expression: int) -> str:
    """An identity as one safe path component; no identity files faces under their expression."""
    if not identity:
        return label_name(expression) or "_unknown"
    name = _fitting(identity.replace("/", "_").replace("\\", "_"))
    # never hidden, never "..", never the parts folder, never one of the table's own files
    return "_" + name if name.startswith(".") or name in _OWN_FILES else name


def _fitting(name: str) -> str:
    """``name`` when it fits a file name with what exaug adds to it; else its start and a hash of
    the whole, the same on every run (so a resumed run picks the same name)."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= _NAME_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    return encoded[:_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore") + "~" + digest


def png_paths(rows: FaceRows, taken: AbstractSet[str]) -> list[str]:
    """``<identity>/<source stem>_f<face>_<original|expression|like>.png`` (``like``: generated with a
    reference face's expression, which has no name); a name already taken (two sources with one stem)
    gets ``-2``, ``-3``... after the stem, the same on every resume. ``taken`` is left as it is."""
    paths: list[str] = []
    mine: set[str] = set()
    for identity, source, face, expression, synthetic in zip(rows.identity, rows.source, rows.face.tolist(),
                                                              rows.expression.tolist(), rows.synthetic.tolist()):
        folder, stem = _folder_name(identity, expression), _fitting(PurePosixPath(source).stem)
        suffix = "original" if not synthetic else EXPRESSIONS[expression] if expression >= 0 else "like"
        path, copy = f"{folder}/{stem}_f{face}_{suffix}.png", 1
        while path in taken or path in mine:
            copy += 1
            path = f"{folder}/{stem}-{copy}_f{face}_{suffix}.png"
        mine.add(path)
        paths.append(path)
    return paths
