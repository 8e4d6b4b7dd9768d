"""Replacing a file whole or not at all: write a temporary file beside it, fsync, rename over it.

Every file exaug writes that a crash must not leave half-written (face tables and their parts,
PNGs, checkpoints, sample sheets, reports, videos) goes through :class:`Replacement`, mostly by way
of :func:`replacing`, so a reader sees the old file or the new one whenever the process dies.
Leftover temporaries are named ``.<name>.tmp`` (``.<name>.tmp<suffix>`` for writers that pick the
format from the name), which is how :mod:`exaug.io.store` recognises them on resume.

A write that fails for a reason of the system (a full disk, a read-only folder, a file-size limit)
leaves the old file, removes the temporary and raises :class:`~exaug.errors.ExaugError` naming the
file and the reason: one line for the user, never a traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from exaug.errors import ExaugError


class Replacement:
    """A pending replacement of ``path``: write ``temporary``, then :meth:`commit` or :meth:`discard`.

    For writers whose file outlives one ``with`` block (the video writer opens, writes and closes
    in separate calls); everything else uses :func:`replacing`. ``keep_suffix`` ends the temporary
    name with ``path``'s suffix, for libraries (FFmpeg) that choose the container from it."""

    def __init__(self, path: Path | str, *, keep_suffix: bool = False):
        self.path = Path(path)
        self.temporary = self.path.with_name(f".{self.path.name}.tmp{self.path.suffix if keep_suffix else ''}")

    def commit(self, *, sync_folder: bool = False) -> None:
        """fsync the temporary and rename it over ``path``; with ``sync_folder``, fsync the folder
        too, so the rename itself survives a power cut."""
        with open(self.temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(self.temporary, self.path)
        if sync_folder:
            _fsync_folder(self.path.parent)

    def discard(self) -> None:
        """Remove the temporary; ``path`` stays as it was."""
        self.temporary.unlink(missing_ok=True)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed over ``path``,
    on failure removed."""
    replacement = Replacement(path)
    try:
        yield replacement.temporary
        replacement.commit()
    except BaseException as err:
        replacement.discard()
        if isinstance(err, OSError):
            raise write_failure(path, err) from err
        raise


def write_failure(path: Path | str, err: OSError) -> ExaugError:
    """The one line a failed write of ``path`` becomes."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    if err.errno in (errno.EEXIST, errno.ENOTDIR):  # the system's "File exists" hides which name is in the way
        existing = next((folder for folder in (Path(path), *Path(path).parents) if os.path.lexists(folder)), None)
        if existing is not None and existing.exists() and not existing.is_dir():
            reason = f"{existing} is a file, not a folder"
    return ExaugError(f"{path}: cannot write ({reason})")


def make_folder(folder: Path, named: Path | None = None) -> None:
    """Make ``folder``, and those above it, where missing: a failure (a file where a folder should be,
    a read-only parent) is :func:`write_failure`'s one line on ``named`` (default: the folder), not the
    system's bare reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failure(named or folder, err) from err


def make_folder_for(path: Path) -> None:
    """Make ``path``'s folder (:func:`make_folder`), a failure said of ``path``."""
    make_folder(path.parent, named=path)


def check_writable(path: Path | str) -> None:
    """Refuse, before the work, a file written only at its end (a preview sheet, a report): its folder
    is made and its temporary created and removed, so a read-only folder or a place like /proc is
    named at once instead of after minutes of work. A full disk can still fail later, said alike."""
    path = Path(path)
    if path.is_dir():
        raise ExaugError(f"{path}: is a folder; name the file to write")
    make_folder_for(path)
    replacement = Replacement(path)
    try:
        replacement.temporary.open("wb").close()
    except OSError as err:
        raise write_failure(path, err) from err
    finally:
        replacement.discard()


class _RecordingWriter:
    """The handle :func:`atomic_write` gives its callback: it keeps the first OSError of a write,
    which torch.save reports only as an unspecific RuntimeError of its own."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self._handle.flush()


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` through :func:`replacing`, then fsync the folder so the rename itself
    survives a power cut (a checkpoint's ``latest`` pointer must never name a missing file)."""
    path = Path(path)
    make_folder_for(path)
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        recording = _RecordingWriter(handle)
        try:
            write(recording)  # type: ignore[arg-type]
        except Exception as err:
            if recording.error is not None and not isinstance(err, OSError):
                raise recording.error from err  # replacing turns it into one line
            raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
