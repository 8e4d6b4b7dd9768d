"""Training faces: reading them, the subject-disjoint validation split, and the batches.

Everything the loop needs is a :class:`FaceSet` (images, expression labels, subject ids), whatever
the source: an aligned table written by ``exaug align`` (HDF5 or folder), or a folder with one
sub-folder per expression of ready-cropped faces read as they are. Raw photo folders are aligned
before training, by the pipeline (:mod:`exaug.pipelines.training`), never here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from exaug.errors import ExaugError, ImageLoadError, InputError
from exaug.expressions import EXPRESSIONS, canonical_expression, label_index
from exaug.faces.align import resize_faces
from exaug.io.sources import discover_sources, load_source
from exaug.io.store import is_face_table, read_faces
from exaug.progress import console, progress_bar

_CKPLUS_NAME = re.compile(r"^(S\d+)_\d+_\d+$")  # CK+: S005_001_00000011 -> subject S005
AUTO_VAL_FRACTION = 0.05
EPOCH_SEED_STRIDE = 1_000_003  # a prime above any epoch count: (seed, epoch) pairs never share an order


@dataclass(frozen=True)
class FaceSet:
    """Faces with an expression label each. ``images`` is anything indexed by a sorted array of
    rows giving (n, H, W, 3) uint8 RGB (a numpy array, an HDF5 dataset); ``rows`` selects from it,
    so a split is a view, not a copy."""

    images: Any
    rows: np.ndarray  # (N,) int64 rows of ``images``
    labels: np.ndarray  # (N,) int64 indices into EXPRESSIONS
    subjects: np.ndarray  # (N,) str; "" where unknown
    source: str  # where the faces came from, for the checkpoint's data summary
    template: str | None  # alignment template, None for crops read as they are

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: np.ndarray) -> FaceSet:
        return replace(self, rows=self.rows[index], labels=self.labels[index], subjects=self.subjects[index])

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Images of the given positions, in that order (repeats allowed), as (n, H, W, 3) uint8."""
        unique, inverse = np.unique(self.rows[index], return_inverse=True)
        return np.asarray(self.images[unique])[inverse]

    def faces_at(self, index: np.ndarray, size: int) -> torch.Tensor:
        """Images of the given positions as (n, 3, size, size) uint8, resized as everywhere else."""
        return resize_faces(torch.from_numpy(self.gather(index)).permute(0, 3, 1, 2), size)

    def known_subjects(self) -> list[str]:
        """The subject ids of these faces, sorted, without "" (unknown)."""
        return sorted(set(self.subjects.tolist()) - {""})

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.labels, minlength=len(EXPRESSIONS))
        return {"source": self.source, "images": len(self), "subjects": len(self.known_subjects()),
                "per_expression": dict(zip(EXPRESSIONS, counts.tolist()))}


def subject_of(source: str, identity: str) -> str:
    """The person a face shows: CK+'s file-name prefix, else the identity folder; "" when unknown.

    A flat folder's "identity" is the file stem (one per image), which would make a subject split a
    random image split, so it counts as unknown.
    """
    stem = PurePosixPath(source).stem
    match = _CKPLUS_NAME.match(stem)
    if match:
        return match.group(1)
    if identity and identity != stem and canonical_expression(identity) is None:
        return identity
    return ""


def load_faces(path: Path | str, *, image_size: int, crops: bool = False, show_progress: bool = True,
               source: Path | str | None = None) -> FaceSet:
    """The labelled faces at ``path``: a face table (``exaug align``'s output, HDF5 or folder), or with
    ``crops`` a folder with one sub-folder per expression of ready-cropped faces, read as they are
    and resized to ``image_size``. Faces of unknown expression are left out (they cannot train the
    classifier losses). A folder of raw photos is aligned first, by
    :func:`exaug.pipelines.training.training_data`: training only reads faces. ``source``: the data
    as the user gave it (the photos' folder ``path`` is an aligned cache of), named in the result
    and in errors (a cache file's name means nothing to them)."""
    path = Path(path)
    shown = Path(source or path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        faces = _read_table(path)
    elif crops:
        faces = _read_crops(path, image_size, show_progress=show_progress)
    elif is_face_table(path):
        faces = _read_table(path)
    else:
        raise InputError(f"{path}: not aligned faces; align the folder first (exaug align, or exaug train, which "
                         "aligns it for you), or read ready-cropped faces as they are (--no-align)")
    known = faces.labels >= 0
    if not known.any():
        raise ExaugError(f"{shown}: no face has an expression label (expected one sub-folder per expression)")
    return replace(faces.subset(np.flatnonzero(known)), source=str(shown))


def _read_table(path: Path) -> FaceSet:
    table = read_faces(path)
    subjects = np.array([subject_of(s, i) for s, i in zip(table.source, table.identity)], dtype=object)
    return FaceSet(table.images, np.arange(len(table)), np.asarray(table.expression, np.int64), subjects,
                   str(path), table.attrs.get("template"))


def _read_crops(root: Path, size: int, *, show_progress: bool) -> FaceSet:
    """Expression folders of ready-cropped faces (CK+ crops, FER2013), centre-squared and resized."""
    sources = [source for source in discover_sources(root) if source.expression]
    images, labels, subjects, failures = [], [], [], []
    with progress_bar("images", disable=not show_progress) as bar:
        task = bar.add_task("reading faces", total=len(sources), info="")
        for source in sources:
            bar.advance(task)
            try:
                image = load_source(source)
            except ImageLoadError as err:
                failures.append(str(err))
                continue
            images.append(_square(image, size))
            labels.append(label_index(source.expression))
            subjects.append(subject_of(source.relpath, source.identity))
    for failure in failures[:10]:
        console.print(f"  [yellow]skipped[/] {failure}", highlight=False)
    if not images:
        raise InputError(f"{root}: no readable face in an expression sub-folder (expected sub-folders named "
                         f"{', '.join(EXPRESSIONS)}; the output of exaug align needs no --no-align)")
    return FaceSet(np.stack(images), np.arange(len(images)), np.array(labels, np.int64),
                   np.array(subjects, dtype=object), str(root), None)


def _square(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(crop if side == size else crop.resize((size, size), Image.Resampling.LANCZOS))


def split_validation(faces: FaceSet, spec: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and validation positions, and a line saying what was held out.

    Whole subjects are held out, so validation samples show people the model never saw. Without
    subject ids a fixed random image split is used instead, and the message says so.
    """
    spec = str(spec).strip()
    everything = np.arange(len(faces))
    if spec in ("0", "none", ""):
        return everything, everything[:0], "no validation hold-out (samples show training faces)"
    rng = np.random.default_rng(seed)
    known = faces.known_subjects()
    if not known:
        count = max(1, round(AUTO_VAL_FRACTION * len(faces)))
        val = np.sort(rng.permutation(len(faces))[:count])
        return (np.setdiff1d(everything, val), val,
                f"subject ids unknown: held out a fixed random {count} images (the same people may be in both)")
    if spec == "auto" or spec.isdigit():
        count = max(1, round(AUTO_VAL_FRACTION * len(known))) if spec == "auto" else int(spec)
        if count >= len(known):
            raise ExaugError(f"--val-subjects {spec}: only {len(known)} subjects, none would be left to train on")
        held = [known[i] for i in rng.permutation(len(known))[:count]]
    else:
        held = [name.strip() for name in spec.split(",") if name.strip()]
        missing = sorted(set(held) - set(known))
        if missing:
            raise ExaugError(f"--val-subjects: unknown subjects {', '.join(missing)} (e.g. {', '.join(known[:5])})")
    val = np.flatnonzero(np.isin(faces.subjects, held))
    shown = ", ".join(sorted(held)[:8]) + (", ..." if len(held) > 8 else "")
    return (np.setdiff1d(everything, val), val,
            f"validation: {len(held)} held-out subject{'s' if len(held) > 1 else ''} ({shown}), {len(val)} images")


def sample_positions(faces: FaceSet, count: int, seed: int) -> np.ndarray:
    """Fixed faces for the sample sheets, cycling through the expressions so each row differs."""
    order = np.random.default_rng(seed).permutation(len(faces))
    labels = faces.labels[order]
    rank = np.zeros(len(order), np.int64)
    for label in np.unique(labels):
        rank[labels == label] = np.arange((labels == label).sum())
    return order[np.lexsort((labels, rank))][:count]


class TrainSampler:
    """An endless stream of index batches for one process: shuffled (or class-balanced) epochs,
    the same on every rank and dealt out rank by rank, so N processes see disjoint faces.

    torch's DistributedSampler can neither draw class-balanced samples nor start mid-epoch; this
    starts at any step, so a resumed run sees exactly the batches the uninterrupted one would have.
    Balanced epochs draw each face with probability inversely proportional to its expression's
    count (with replacement), so CK+'s 18 contempt faces come up as often as its 593 neutral ones.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, *, seed: int, rank: int = 0, world: int = 1,
                 balance: bool = False, start_step: int = 0):
        self.labels, self.batch_size, self.seed = labels, batch_size, seed
        self.rank, self.world, self.balance, self.start_step = rank, world, balance, start_step
        self.per_rank = math.ceil(len(labels) / world)

    def _epoch(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        total = self.per_rank * self.world
        if self.balance:
            counts = np.bincount(self.labels)
            weights = torch.from_numpy(1.0 / counts[self.labels])
            order = torch.multinomial(weights, total, replacement=True, generator=generator)
        else:
            order = torch.randperm(len(self.labels), generator=generator).repeat(math.ceil(total / len(self.labels)))
        return order[:total].numpy()[self.rank::self.world]

    def __iter__(self) -> Iterator[np.ndarray]:
        epoch, offset = divmod(self.start_step * self.batch_size, self.per_rank)
        pending = self._epoch(epoch)[offset:]
        while True:
            while len(pending) < self.batch_size:
                epoch += 1
                pending = np.concatenate([pending, self._epoch(epoch)])
            yield pending[:self.batch_size]
            pending = pending[self.batch_size:]


class FaceDataset(torch.utils.data.Dataset):
    """Whole batches at once (``__getitems__``): one gather per batch instead of one read per face."""

    def __init__(self, faces: FaceSet):
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    def __getitems__(self, index: list[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.asarray(index)
        images = torch.from_numpy(self.faces.gather(index)).permute(0, 3, 1, 2)
        return images, torch.from_numpy(self.faces.labels[index])


def already_collated(batch: Any) -> Any:
    """collate_fn: :class:`FaceDataset` already returns a batch."""
    return batch


def train_loader(faces: FaceSet, batches: TrainSampler, *, workers: int,
                 pin_memory: bool) -> torch.utils.data.DataLoader:
    """Batches from ``workers`` processes. The loader's own generator (it only seeds workers) keeps
    it off the global RNG, which a resumed run restores and must find untouched."""
    return torch.utils.data.DataLoader(FaceDataset(faces), batch_sampler=batches, collate_fn=already_collated,
                                       num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                       generator=torch.Generator().manual_seed(batches.seed))
