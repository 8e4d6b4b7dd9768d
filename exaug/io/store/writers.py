"""The two output forms' writers (an HDF5 file, a folder of PNGs) and :func:`open_writer`, which
picks one by the output's name."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py

from exaug.expressions import label_name
from exaug.io.atomic import make_folder, make_folder_for, replacing
from exaug.io.images import save_png
from exaug.io.store.folder import (FOLDER_INFO, MANIFEST_COLUMNS, SOURCES_COLUMNS, SOURCES_FILE, manifest_cell,
                                   png_paths, source_cells, write_csv)
from exaug.io.store.hdf5 import HDF5_SUFFIXES, read_h5_table, read_header, write_final, write_master
from exaug.io.store.parts import FaceWriter, remove_tree
from exaug.io.store.rows import FaceRows
from exaug.io.store.table import FaceTable, size_from_attrs

_PNG_THREADS = 8


class H5Writer(FaceWriter):
    """Parts hold the images; the output is a master over them until one consolidated file."""

    def _output_exists(self) -> bool:
        return self.output.exists()

    def _existing_run_key(self) -> dict[str, Any] | None:
        try:
            with h5py.File(self.output, "r") as h5:
                return read_header(h5)[1]
        except OSError:  # not an HDF5 file
            return None

    def _remove_output(self) -> None:
        self.output.unlink(missing_ok=True)
        remove_tree(self.parts_dir)

    def _leftovers(self) -> list[Path]:
        return [self.output.with_name(f".{self.output.name}.tmp"), *self.parts_dir.glob(".*.tmp")]

    def _adopt(self, finished: FaceTable) -> None:
        part = self.parts_dir / "part-00000.h5"
        os.replace(self.output, part)  # a final file is a valid part
        self._register(part, read_h5_table(part))

    def _row_paths(self, rows: FaceRows) -> None:
        return None

    def _store_images(self, h5: h5py.File, rows: FaceRows, table: FaceTable) -> None:
        if len(rows):
            h5.create_dataset("images", data=rows.images)

    def _publish(self) -> None:
        size = self._size or size_from_attrs(self.attrs)
        write_master(self.output, self._ledger, self._parts, self._latest, size, self.attrs, self.run_key)

    def _finalize(self) -> None:
        make_folder_for(self.output)
        tables = [read_h5_table(part) for part, _ in self._parts]
        try:
            write_final(self.output, tables, self.attrs, self.run_key)
        finally:
            for table in tables:
                table.close()


class FolderWriter(FaceWriter):
    """PNGs go straight to their final place; parts hold the metadata; manifest.csv lists them."""

    def _output_exists(self) -> bool:
        return self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir()))

    def _existing_run_key(self) -> dict[str, Any] | None:
        info = self.output / FOLDER_INFO
        return json.loads(info.read_text()).get("run_key") if info.is_file() else None

    def _remove_output(self) -> None:
        remove_tree(self.output)

    def _leftovers(self) -> list[Path]:
        return list(self.output.rglob(".*.tmp")) if self.output.is_dir() else []

    def _adopt(self, finished: FaceTable) -> None:
        self._append_part(finished, lambda h5: None)  # its PNGs are already in place

    def _row_paths(self, rows: FaceRows) -> list[str]:
        return png_paths(rows, self._paths)

    def _store_images(self, h5: h5py.File, rows: FaceRows, table: FaceTable) -> None:
        """Threads: PNG encoding releases the GIL, and concurrent fsyncs share one journal commit."""
        with ThreadPoolExecutor(_PNG_THREADS) as pool:
            list(pool.map(save_png, rows.images, [self.output / path for path in table.paths]))

    def _publish(self) -> None:
        """exaug.json first: it says how to read the extra columns the manifest is about to list.
        The PNGs of rows a later part replaced go once the manifest no longer lists them."""
        ledger = self._ledger
        make_folder(self.output)
        columns = {name: {"dtype": str(values.dtype), "shape": list(values.shape[1:])}
                   for name, values in ledger.extra.items()}
        with replacing(self.output / FOLDER_INFO) as temporary:
            temporary.write_text(json.dumps({"run_key": self.run_key, "attrs": self.attrs, "columns": columns},
                                            indent=2))
        write_csv(self.output / "failures.csv", ("source", "reason"), ledger.failures)
        expression_names = [label_name(index) or "" for index in ledger.expression.tolist()]
        synthetic = ["true" if flag else "false" for flag in ledger.synthetic.tolist()]
        rows = zip(ledger.paths, ledger.identity, expression_names, synthetic, ledger.source,
                   ledger.face.tolist(), *(manifest_cell(values) for values in ledger.extra.values()))
        write_csv(self.output / "manifest.csv", (*MANIFEST_COLUMNS, *ledger.extra), rows)
        write_csv(self.output / SOURCES_FILE, SOURCES_COLUMNS, source_cells(ledger))
        for table, kept in zip(self._tables, self._latest):
            if table.paths is not None and len(kept) < len(table):
                for path in set(table.paths).difference(table.paths[row] for row in kept):
                    (self.output / path).unlink(missing_ok=True)

    def _finalize(self) -> None:
        self._publish()


def open_writer(output: Path | str, *, run_key: dict[str, Any], attrs: dict[str, Any],
                overwrite: bool = False) -> FaceWriter:
    """A writer for ``output``: an HDF5 file when it ends in .h5/.hdf5, else a folder of PNGs.

    Raises ExaugError when ``output`` holds another run (different ``run_key``) or something exaug
    did not write, unless ``overwrite`` (which never deletes a folder exaug did not write)."""
    output = Path(output)
    writer = H5Writer if output.suffix.lower() in HDF5_SUFFIXES else FolderWriter
    return writer(output, run_key=run_key, attrs=attrs, overwrite=overwrite)
