"""Reading a face table in either form, and merging finished outputs into one HDF5 file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py

from exaug.errors import ExaugError, InputError
from exaug.io.atomic import make_folder_for
from exaug.io.outputs import OutputLock, check_not_input
from exaug.io.store.folder import FOLDER_INFO, FOLDER_PARTS, read_folder_table
from exaug.io.store.hdf5 import HDF5_SUFFIXES, read_h5_table, write_final
from exaug.io.store.table import FaceTable


def parts_folder(output: Path) -> Path:
    """Where a writer of ``output`` keeps its parts (and run.json) until it finishes."""
    return output / FOLDER_PARTS if output.suffix.lower() not in HDF5_SUFFIXES else \
        output.with_name(output.name + ".parts")


def is_unfinished(output: Path) -> bool:
    """Whether ``output`` is a run that was stopped before it finished (its parts are still there)."""
    return (parts_folder(output) / "run.json").is_file()


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
    try:
        if not is_face_table(path):
            raise InputError(f"{path}: not a face table written by exaug (an .h5 file or a folder with manifest.csv)")
        return read_folder_table(path) if path.is_dir() else read_h5_table(path)
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # h5py's and csv's ways of saying "damaged"
        raise InputError(f"{path}: damaged or truncated face table ({err})") from err


def merge(parts: Sequence[Path | str], output: Path | str) -> None:
    """Join finished outputs (e.g. the shards of ``exaug augment --num-shards``) into one HDF5 file:
    rows in :func:`_merge_order` (shards by shard index, other outputs as given), identity and source
    indices remapped, failures concatenated, attrs of the first input plus ``merged_from``."""
    output = Path(output)
    if output.suffix.lower() not in HDF5_SUFFIXES:
        raise ExaugError(f"{output}: merge writes HDF5; name the output .h5 or .hdf5")
    if not parts:
        raise ExaugError("merge: no inputs given")
    seen: dict[tuple[int, int], Path] = {}
    for part in map(Path, parts):
        if not part.exists():
            continue  # read_faces says so
        check_not_input(part, output)
        if is_unfinished(part):
            raise ExaugError(f"{part}: unfinished (its run was stopped); run its command again to finish it, "
                             "then merge")
        inode = (part.stat().st_dev, part.stat().st_ino)
        if inode in seen:
            raise ExaugError(f"{part}: given twice (as {seen[inode]}); merge each part once")
        seen[inode] = part
    lock = OutputLock(output)
    tables = []
    try:
        tables += [read_faces(part) for part in parts]
        _check_mergeable(parts, tables)
        order = _merge_order(parts, tables)
        ordered = [tables[number] for number in order]
        attrs = {**ordered[0].attrs, "merged_from": [str(parts[number]) for number in order]}
        make_folder_for(output)
        write_final(output, ordered, attrs, {"merged": [table.run_key for table in ordered]}, latest=False)
    finally:
        for table in tables:
            table.close()
        lock.release()


def _check_mergeable(parts: Sequence[Path | str], tables: Sequence[FaceTable]) -> None:
    """Faces from different models, of different sizes, with other target expressions or another
    ``--like`` reference would make one table that lies; one run's output twice (a copy of a shard)
    would repeat its rows."""
    for number, table in enumerate(tables):
        done, input_path = set(table.completed_sources()), (table.run_key or {}).get("input")
        for other, earlier in zip(parts, tables[:number]):
            both = done & set(earlier.completed_sources())
            if (earlier.run_key or {}).get("input") != input_path or not both:
                continue
            shards = _shard(earlier), _shard(table)
            if None not in shards and shards[0] != shards[1]:  # two shards of a set: the input changed between runs
                raise ExaugError(f"{other} and {parts[number]} (shards {shards[0][0]} and {shards[1][0]} of "
                                 f"{shards[0][1]}) both hold {sorted(both)[0]}: images added to or removed from "
                                 f"{input_path} between the shards' runs moved the boundaries between shards; run "
                                 "every shard again with --overwrite, then merge")
            raise ExaugError(f"{parts[number]}: holds sources {other} holds too ({sorted(both)[0]}, ...); "
                             "is it the same shard twice? merge each part once")
    for what, values in (("model_hash", [table.attrs.get("model_hash") for table in tables]),
                         ("image size", [table.image_size for table in tables]),
                         ("--emotion list", [(table.run_key or {}).get("expressions") for table in tables]),
                         ("--like reference", [(table.run_key or {}).get("like") for table in tables])):
        if len({json.dumps(value) for value in values}) > 1:
            listing = ", ".join(f"{part} has {value}" for part, value in zip(parts, values))
            raise ExaugError(f"cannot merge outputs whose {what} differs: {listing}")


def _shard(table: FaceTable) -> tuple[int, int] | None:
    """(index, count) of an output of ``exaug augment --num-shards`` with more than one shard; None
    for a whole run's output (one shard, align, an earlier merge: no ``shard`` in its run key)."""
    index, count = (table.run_key or {}).get("shard", (0, 1))
    return (index, count) if count > 1 else None


def _merge_order(parts: Sequence[Path | str], tables: Sequence[FaceTable]) -> list[int]:
    """Positions of ``tables`` in the order they are joined: the shards of one input by shard index,
    where the first of them was given, so the merge holds a single run's rows whatever order the
    shards were named in; any other output where it was given (unsharded outputs merged on purpose)."""
    shards = [_shard(table) for table in tables]
    order: list[int | str] = []  # a whole output's position, or the input whose shards go there
    shards_of: dict[str, list[int]] = {}
    for number, (table, shard) in enumerate(zip(tables, shards)):
        if shard is None:
            order.append(number)
            continue
        input_path = table.run_key["input"]
        if input_path not in shards_of:
            order.append(input_path)
        shards_of.setdefault(input_path, []).append(number)
    for input_path, members in shards_of.items():
        members.sort(key=lambda number: shards[number])
        _check_complete(input_path, [(parts[number], shards[number]) for number in members])
    return [number for item in order for number in (shards_of[item] if isinstance(item, str) else [item])]


def _check_complete(input_path: str, shards: Sequence[tuple[Path | str, tuple[int, int]]]) -> None:
    """The shards of one input, in index order, must be all of one ``--num-shards N``, each index
    once: a set that lacks one or mixes counts is not a single run's rows (one line naming what is
    missing)."""
    given = ", ".join(f"{part} is shard {index} of {count}" for part, (index, count) in shards)
    counts = sorted({count for _, (_, count) in shards})
    if len(counts) > 1:
        raise ExaugError(f"cannot merge shards of {input_path} split {' and '.join(map(str, counts))} ways "
                         f"({given}); merge the parts of one --num-shards")
    indices = [index for _, (index, _) in shards]
    if twice := sorted({index for index in indices if indices.count(index) > 1}):
        raise ExaugError(f"cannot merge shard {twice[0]} of {counts[0]} of {input_path} twice ({given}); "
                         "merge each part once")
    if missing := sorted(set(range(counts[0])) - set(indices)):
        raise ExaugError(f"cannot merge an incomplete set of shards of {input_path}: shard"
                         f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {counts[0]} "
                         f"{'are' if len(missing) > 1 else 'is'} missing ({given}); give all {counts[0]} parts")
