"""Committing parts: :class:`FaceWriter`, the resumable mechanism both output forms share. A run
commits whole sources as atomic parts, republishes the visible output after each (or, once that
grows dear, after some: :data:`PUBLISH_SHARE`), resumes from its parts, and consolidates at
``finish()``; what differs between the forms is left to nine hooks (implemented in
:mod:`exaug.io.store.writers`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from exaug.errors import ExaugError
from exaug.io.atomic import replacing
from exaug.io.outputs import OutputLock
from exaug.io.store.hdf5 import RESERVED_ATTRS, read_h5_table, write_columns, write_strings, writing_h5
from exaug.io.store.reading import parts_folder, read_faces
from exaug.io.store.rows import FaceRows, check_same_extras
from exaug.io.store.table import FaceTable, concat_tables, latest_rows, rows_table

# Republishing the visible output after a commit costs time in proportion to everything committed
# so far (the HDF5 master maps every part and holds every row's columns; the folder's manifest lists
# every row), so a large run spent most of its time there: 190 ms a commit after 1,500 commits of 16
# faces with meshes, and growing. A publish cheaper than PUBLISH_ALWAYS still follows every commit;
# a dearer one waits until it costs at most PUBLISH_SHARE of the time since the last (its parts,
# which the next run resumes from, are written at every commit all the same).
PUBLISH_ALWAYS = 0.05  # seconds
PUBLISH_SHARE = 0.1


class FaceWriter(ABC):
    """Commits parts and republishes the visible output (see the module docstring).

    Leaving a ``with`` block normally finishes the output; leaving it by an exception keeps the
    parts, so the next run with the same run key resumes where this one stopped. From opening to
    finishing, the writer holds the output's lock (:class:`~exaug.io.outputs.OutputLock`): a second
    writer of the same output is refused instead of deleting parts under the first."""

    def __init__(self, output: Path, *, run_key: dict[str, Any], attrs: dict[str, Any], overwrite: bool):
        if reserved := set(RESERVED_ATTRS).intersection(attrs):
            raise ValueError(f"attrs may not use the reserved names {sorted(reserved)}")
        self.output = output
        self.run_key: dict[str, Any] = json.loads(json.dumps(run_key))  # as it reads back from disk
        self.attrs = dict(attrs)
        self._tables: list[FaceTable] = []  # each part's metadata (no images), in commit order
        self._joined: FaceTable | None = None  # _tables joined, until the next commit
        self._kept: list[np.ndarray] | None = None  # each part's rows no later part replaces, likewise
        self._parts: list[tuple[Path, int]] = []  # (part file, rows)
        self._done: set[str] = set()
        self._failed: dict[str, str] = {}  # source -> reason, for sources whose last outcome is a failure
        self._stamps: dict[str, str] = {}  # source -> its file's stamp when it was read, where known
        self._changed: set[str] = set()  # completed sources that may be completed again (redo())
        self._paths: set[str] = set()  # the folder form's image files, relative to the output
        self._extra: dict[str, np.ndarray] | None = None  # the first committed rows' extra columns
        self._published_at, self._publish_cost, self._stale = time.monotonic(), 0.0, False
        self._size: tuple[int, int] | None = None  # (height, width) of the committed faces
        self._finished: FaceTable | None = None  # this run key's finished output, until commit adopts it
        self._closed = False
        self._lock = OutputLock(output)
        try:
            if overwrite:
                self._check_ours()
                self._remove_output()
            self._remove_leftovers()
            self._open_existing()
        except BaseException:
            self._lock.release()
            raise

    @property
    def parts_dir(self) -> Path:
        """Where parts and run.json live until finish()."""
        return parts_folder(self.output)

    @property
    def done_sources(self) -> set[str]:
        """Sources an earlier run with this run key completed (with rows, none, or a failure)."""
        return set(self._done)

    @property
    def failures(self) -> dict[str, str]:
        """Why each failed source failed, as last recorded. A failed source may be committed again
        (a retry); its new outcome replaces the failure."""
        return dict(self._failed)

    @property
    def stamps(self) -> dict[str, str]:
        """Each completed source's file stamp when it was read (:func:`~exaug.io.digest.file_stamp`),
        for the sources committed with one."""
        return dict(self._stamps)

    def redo(self, sources: set[str]) -> None:
        """Let completed ``sources`` be committed again: their files changed since they were read.
        Their new rows (or failure) replace the old ones in the output."""
        self._changed |= sources

    @property
    def _ledger(self) -> FaceTable:
        """Metadata of every standing row, in commit order (joined when asked for: publishing)."""
        if self._joined is None:
            self._joined = concat_tables(self._tables, self._latest)
        return self._joined

    @property
    def _latest(self) -> list[np.ndarray]:
        """Each part's rows that the ledger holds: all but those of sources completed again later."""
        if self._kept is None:
            self._kept = latest_rows(self._tables)
        return self._kept

    def __enter__(self) -> FaceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.finish()
            return
        try:
            if self._stale:  # a stopped run's output shows every committed batch
                self._publish_timed()
        except (OSError, ExaugError):  # the disk that stopped the run; the parts hold every batch
            pass
        finally:
            self._lock.release()

    def commit(self, rows: FaceRows, done: Sequence[str], failures: Sequence[tuple[str, str]] = (),
               stamps: dict[str, str] | None = None) -> None:
        """Atomically add ``rows`` and mark ``done`` complete; a failed source counts as done too.
        Commit whole sources: every row's source must be in ``done``. ``stamps``: the done sources'
        file stamps when they were read, kept so a later run can tell which changed since."""
        if self._closed:
            raise RuntimeError(f"{self.output}: commit after finish()")
        if self._finished is not None:
            self._adopt_finished()
        table = rows_table(rows, list(dict.fromkeys([*done, *(source for source, _ in failures)])), failures, stamps)
        self._check_commit(rows, table.completed_sources())
        table.paths = self._row_paths(rows)
        self._append_part(table, lambda h5: self._store_images(h5, rows, table))
        self._changed.difference_update(table.completed_sources())
        if len(rows):
            self._size = self._size or (rows.images.shape[1], rows.images.shape[2])
        if self._publish_cost < PUBLISH_ALWAYS or time.monotonic() - self._published_at >= \
                self._publish_cost / PUBLISH_SHARE:
            self._publish_timed()
        else:
            self._stale = True

    def finish(self) -> None:
        """Make the output final and self-contained, then remove the parts. Does nothing the second
        time, nor to an output this run key had already finished."""
        if self._closed:
            return
        try:
            if self._finished is None:
                self._finalize()
                remove_tree(self.parts_dir)
            else:
                self._finished.close()
        finally:
            self._lock.release()
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
            self._failed = dict(self._finished.failures)
            self._stamps = dict(self._finished.stamps)

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

    def _check_ours(self) -> None:
        """``overwrite`` deletes only what exaug wrote: an output with exaug's run key, and a parts
        folder holding run.json (or nothing but exaug's temporaries)."""
        parts_ours = (self.parts_dir / "run.json").is_file()
        if self._output_exists() and not parts_ours and self._existing_run_key() is None:
            raise ExaugError(f"{self.output} exists and was not written by exaug; --overwrite will not delete it")
        if self.parts_dir.is_dir() and not parts_ours and any(not is_temporary(path)
                                                              for path in self.parts_dir.iterdir()):
            raise ExaugError(f"{self.parts_dir} holds files exaug did not write; --overwrite will not delete it")

    def _remove_leftovers(self) -> None:
        """Temporary files of a run that was killed, and its parts folder if it was killed before
        its first part (then the folder is empty; one holding anything else is not exaug's)."""
        for leftover in self._leftovers():
            leftover.unlink(missing_ok=True)
        if self.parts_dir.is_dir() and not (self.parts_dir / "run.json").exists():
            try:
                self.parts_dir.rmdir()
            except OSError:
                raise ExaugError(f"{self.parts_dir} holds files exaug did not write; move them away or "
                                 "choose another output") from None

    def _load_parts(self) -> None:
        parts = sorted(self.parts_dir.glob("part-*.h5"), key=lambda part: int(part.stem.split("-")[1]))
        for part in parts:
            table = read_h5_table(part)
            self._size = self._size or (table.image_size if len(table) else None)
            self._register(part, table)
        self._publish_timed()

    def _adopt_finished(self) -> None:
        """New sources for a finished output: its rows become the first part and the run goes on."""
        finished, self._finished = self._finished, None
        finished.close()
        self._start_parts()
        self._adopt(finished)
        self._size = finished.image_size if len(finished) else None
        self._publish_timed()

    # -- committing

    def _check_commit(self, rows: FaceRows, completed: list[str]) -> None:
        """Everything that could make a part unusable is checked before the part is written."""
        if again := self._done.intersection(completed).difference(self._failed, self._changed):
            raise ValueError(f"sources committed before: {sorted(again)[:5]}")
        if partial := set(rows.source).difference(completed):
            raise ValueError(f"rows of sources not in done (commit whole sources): {sorted(partial)[:5]}")
        size = (rows.images.shape[1], rows.images.shape[2])
        if len(rows) and self._size and size != self._size:
            raise ValueError(f"faces are {size[0]}x{size[1]}, earlier ones {self._size[0]}x{self._size[1]}")
        if len(rows) and self._extra is not None:
            check_same_extras([self._extra, rows.extra])

    def _start_parts(self) -> None:
        run_file = self.parts_dir / "run.json"
        if not run_file.exists():
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            with replacing(run_file) as temporary:
                temporary.write_text(json.dumps(self.run_key))

    def _append_part(self, table: FaceTable, store_images: Callable[[h5py.File], None]) -> None:
        self._start_parts()
        part = self.parts_dir / f"part-{len(self._parts):05d}.h5"
        with writing_h5(part) as h5:
            write_columns(h5, table, compress=False)
            if table.paths is not None:
                write_strings(h5, "path", table.paths)
            store_images(h5)
        self._register(part, table)

    def _register(self, part: Path, table: FaceTable) -> None:
        """Record a written part; nothing here grows with the parts before it."""
        self._tables.append(replace(table, images=None))  # its size is kept; a part file is not held open
        self._joined = self._kept = None
        self._parts.append((part, len(table)))
        completed = table.completed_sources()
        self._done.update(completed)
        for source in completed:
            self._failed.pop(source, None)
            self._stamps.pop(source, None)
        self._failed.update(table.failures)
        self._stamps.update(table.stamps)
        self._paths.update(table.paths or ())
        if len(table) and self._extra is None:
            self._extra = table.extra

    def _publish_timed(self) -> None:
        started = time.monotonic()
        self._publish()
        self._published_at = time.monotonic()
        self._publish_cost, self._stale = self._published_at - started, False

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


def is_temporary(path: Path) -> bool:
    """A temporary file of :func:`~exaug.io.atomic.replacing` (``.<name>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_tree(folder: Path) -> None:
    """Rename first, so a folder is either whole or gone even if deletion is interrupted."""
    doomed = folder.with_name(folder.name + ".deleting")
    if doomed.exists():
        shutil.rmtree(doomed)
    if folder.exists():
        os.replace(folder, doomed)
        shutil.rmtree(doomed)
