"""Claiming an output path: never the input itself, and never two writers at once.

Names are not enough to tell that two paths are one file (``./a.h5``, a symlink, a hard link), so
inputs and outputs are compared by device and inode. A writer holds an OS-level lock
(``fcntl.flock``) on a hidden ``.<name>.lock`` file beside its output for as long as it writes: a
second process is refused at once, and since the kernel drops the lock when its holder dies, a run
killed with ``kill -9`` never leaves an output that cannot be resumed.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Sequence
from pathlib import Path

from exaug.errors import ExaugError
from exaug.io.atomic import check_writable, write_failure


def check_not_input(input_path: Path | str, output: Path | str) -> None:
    """Refuse an output that is the input (same file or folder, however it is named)."""
    try:
        same = os.path.samefile(input_path, output)
    except OSError:  # one of them does not exist (yet): they cannot be the same
        return
    if same:
        raise ExaugError(f"{output}: is the input {input_path}; writing it would destroy the input, "
                         "choose another output")


def check_sheet_path(sheet: Path | str, input_path: Path | str, output: Path | str) -> None:
    """Refuse a sheet (``--preview``) that would overwrite what the run reads or writes: the input or
    a file in its folder (the next run would read the sheet as a photo), the output or a file in its
    folder, or an existing file that is not a PNG (given the input photo, the sheet replaced it); and
    one that could not be written (:func:`~exaug.io.atomic.check_writable`): it is written last."""
    sheet, input_path, output = Path(sheet), Path(input_path), Path(output)
    if sheet.suffix.lower() != ".png":
        raise ExaugError(f"{sheet}: the preview is a PNG; name it .png")
    where = sheet.resolve()
    for path, what in ((input_path, "the input"), (output, "the output")):
        folder = path.resolve()
        if where == folder or (not path.is_file() and where.is_relative_to(folder)):
            raise ExaugError(f"{sheet}: {'is' if where == folder else 'is inside'} {what} {path}; choose a path "
                             "outside both for the preview")
    if sheet.is_dir():
        raise ExaugError(f"{sheet}: is a folder; name the preview's file")
    if sheet.is_file():
        with open(sheet, "rb") as file:
            if file.read(8) != b"\x89PNG\r\n\x1a\n":
                raise ExaugError(f"{sheet}: exists and is not a PNG; the preview would replace it, choose another path")
    check_writable(sheet)


def default_output(input_path: Path | str, tag: str, suffix: str) -> Path:
    """Where a run writes when it is given no output: ``NAME.TAG`` + ``suffix`` in the current
    folder, NAME being the input's (a file's without its suffix; for ``.``, the current folder's).
    So the short command just works, the input is never touched, and running the same command
    again finds the same file (resumed or replaced as an explicit output would be)."""
    resolved = Path(input_path).resolve()
    name = (resolved.name if resolved.is_dir() else resolved.stem) or "exaug"  # "/" has no name
    return Path(f"{name}.{tag}{suffix}")


def part_tag(tag: str, index: int, shards: int) -> str:
    """A shard's tag in :func:`default_output`: ``TAG.partKofN``, each shard its own file."""
    return tag if shards == 1 else f"{tag}.part{index}of{shards}"


_PART = re.compile(r"^(?P<name>.+)\.part\d+of\d+$")


def merged_output(parts: Sequence[Path | str]) -> Path:
    """Where ``exaug merge`` writes when it is given no output: the parts' common name without its
    ``.partKofN`` (:func:`part_tag`), in the current folder; parts named otherwise need an output."""
    names = {(match.group("name") if (match := _PART.match(Path(part).stem)) else None, Path(part).suffix)
             for part in parts}
    if len(names) != 1 or None in next(iter(names)):
        raise ExaugError("give --output: the parts are not all named NAME.partKofN.h5 (the names exaug augment "
                         "gives shards without -o)")
    name, suffix = next(iter(names))
    return Path(f"{name}{suffix}")


class OutputLock:
    """An exclusive lock on ``output`` for the life of this object (released by :meth:`release`,
    on garbage collection, or by the kernel when the process dies)."""

    def __init__(self, output: Path | str):
        output = Path(output)
        absolute = output.absolute()  # "." has no name to put beside it
        self.path = absolute.with_name(f".{absolute.name}.lock")
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._acquire(output)
        except OSError as err:  # a read-only folder, a full disk: nothing of the output can be written
            raise write_failure(output, err) from err

    def _acquire(self, output: Path) -> None:
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise ExaugError(f"{output}: another exaug process{f' (pid {holder})' if holder else ''} is "
                                 "writing it; wait for it to finish, or choose another output") from None
            if self._same_file(fd):
                self._fd = fd
            else:  # its holder removed the lock file between our open and our lock: take the new one
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def release(self) -> None:
        """Remove the lock file while still holding it, then let go (idempotent)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
