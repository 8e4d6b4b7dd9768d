"""A FER2013 judge: an expression classifier trained on people the generator never saw.

``exaug eval``'s own judge learns from CK+ subjects, the generator's own pool: it may share the
generator's idea of an expression and flatter it. FER2013 (35,887 48x48 greyscale web faces, seven
classes, no contempt) is a different population, pose range and framing, so a judge trained on its
28,709 ``Training_*`` images and scored on its ``PrivateTest_*`` images says how recognisable an
expression is to somebody else.

FER's crops are framed differently from exaug's template (tighter, the eyes higher), so the judge
records where the five landmarks sit in a typical FER face (measured here by exaug's own detector on
a sample of the training images); :class:`exaug.model.judge.Judge` warps an aligned face into that
frame before it looks at it.

The ``Training_*`` images of the shared copy are far blurrier than its test images (median mean
absolute pixel difference between neighbours 3.5 against 13.8 grey levels, every class alike). A
judge trained on them and shown sharp faces said "anger" to nearly all (PrivateTest 13.7%), so the
judge measures that blur (:func:`matching_blur`, on the unlabelled PublicTest images), records it,
and blurs every face it is asked about by as much; it looks at 24 px, standardised faces, where
little but that blur separates the splits.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from exaug import __version__
from exaug.errors import ExaugError, InputError
from exaug.expressions import EXPRESSIONS
from exaug.model.judge import (FER_EXPRESSIONS, FER_SIZE, Judge, JudgePanel, augment, gaussian_blur, judge_input,
                               judge_network)
from exaug.progress import progress_bar

SPLITS = ("Training", "PublicTest", "PrivateTest")
INPUT_SIZE = 24  # the judge's view: the training faces hold little above it


@dataclass
class FerSplit:
    images: np.ndarray  # (n, 48, 48) uint8 greyscale
    labels: np.ndarray  # (n,) int64, index into FER_EXPRESSIONS

    def __len__(self) -> int:
        return len(self.labels)

    def faces(self, rows: np.ndarray | slice = slice(None)) -> torch.Tensor:
        """uint8 RGB ``(n, 3, 48, 48)``, as every judge input is."""
        return torch.from_numpy(self.images[rows])[:, None].expand(-1, 3, -1, -1).contiguous()


def load_fer2013(root: Path | str, split: str, *, limit_per_class: int | None = None,
                 seed: int = 0) -> FerSplit:
    """One split of the FER2013 image folders (``manifest.csv``: file, label, split), read in full or
    a seeded ``limit_per_class`` sample of each class (quick checks)."""
    root = Path(root)
    if split not in SPLITS:
        raise ExaugError(f"unknown FER2013 split {split!r}: use one of {', '.join(SPLITS)}")
    manifest = root / "manifest.csv"
    try:
        with manifest.open(newline="") as handle:
            rows = [(row["file"], row["label"]) for row in csv.DictReader(handle) if row["split"] == split]
    except (OSError, KeyError, csv.Error) as err:
        raise InputError(f"{manifest}: not a FER2013 manifest (file,label,split columns): {err}") from None
    unknown = {label for _, label in rows} - set(FER_EXPRESSIONS)
    if unknown or not rows:
        raise InputError(f"{manifest}: no {split} rows" if not rows else f"{manifest}: unknown labels {sorted(unknown)}")
    labels = np.array([FER_EXPRESSIONS.index(label) for _, label in rows])
    keep = np.arange(len(rows))
    if limit_per_class is not None:
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:limit_per_class]
                                       for c in range(len(FER_EXPRESSIONS))]))
    images = np.empty((len(keep), FER_SIZE, FER_SIZE), np.uint8)
    for slot, row in enumerate(keep):
        path = root / rows[row][0]
        try:
            with Image.open(path) as image:
                images[slot] = np.asarray(image.convert("L").resize((FER_SIZE, FER_SIZE)))
        except OSError as err:
            raise InputError(f"{path}: cannot read this FER2013 image: {err}") from None
    return FerSplit(images, labels[keep])


def fer_frame(split: FerSplit, sample: int = 400, seed: int = 0) -> list[list[float]]:
    """Where the five landmarks sit in a FER face, as fractions of the side: the median over the
    faces exaug's detector finds in a ``sample`` of the split (upscaled 4x with a margin: MTCNN misses
    48 px faces that fill their crop)."""
    from exaug.faces.detect import FaceDetector

    rows = np.random.default_rng(seed).permutation(len(split))[:sample]
    scale, pad = 4, FER_SIZE * 2  # FER faces touch the crop's edges: MTCNN needs a margin around them
    big = F.interpolate(split.faces(rows).float(), scale_factor=scale, mode="bilinear", align_corners=False)
    big = F.pad(big, (pad, pad, pad, pad), mode="replicate")
    images = [image.round().byte().permute(1, 2, 0).numpy() for image in big]
    found = [faces.landmarks[0] - pad for faces in FaceDetector("cpu", min_face_size=80).detect(images) if len(faces)]
    if len(found) < sample // 20:
        raise ExaugError(f"found faces in only {len(found)} of {len(rows)} FER2013 images; cannot place its frame")
    points = (np.median(np.stack(found), axis=0).astype(np.float64) + 0.5) / (FER_SIZE * scale)
    return points.round(4).tolist()


def _band_power(faces: torch.Tensor) -> torch.Tensor:
    """Mean power of standardised luma faces in six radial frequency bands up to 0.3 cycles/px (log10)."""
    x = judge_input(faces, standardize=True)[:, 0].double()
    power = torch.fft.fft2(x).abs().square().mean(0)
    frequency = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)
    radius = (frequency[:, None] ** 2 + frequency[None, :] ** 2).sqrt()
    return torch.stack([power[(radius >= low) & (radius < low + 0.05)].mean() for low in np.arange(0, 0.3, 0.05)]).log10()


def matching_blur(blurry: FerSplit, sharp: FerSplit, sample: int = 1500, seed: int = 0) -> float:
    """The Gaussian sigma (pixels at 48 px, to 0.25) that gives ``sharp``'s faces the frequency content
    of ``blurry``'s: the one whose band powers, per standardised face, come closest (log scale)."""
    rng = np.random.default_rng(seed)
    pick = lambda split: split.faces(np.sort(rng.permutation(len(split))[:sample]))  # noqa: E731
    target, faces = _band_power(pick(blurry)), pick(sharp)
    faces_float = faces.float()
    errors = {}
    for sigma in np.arange(0.0, 5.01, 0.25):
        blurred = gaussian_blur(faces_float, float(sigma)).round().clamp(0, 255).byte() if sigma else faces
        errors[float(sigma)] = (_band_power(blurred) - target).abs().mean().item()
    return min(errors, key=errors.get)


def train_fer_judge(training: FerSplit, *, epochs: int = 15, batch_size: int = 64, lr: float = 2e-3,
                    seed: int = 0, frame: list[list[float]] | None = None, blur: float = 0.0,
                    show_progress: bool = False) -> Judge:
    """The FER judge (:func:`exaug.model.judge.judge_network` ``"fer-cnn"``) trained from scratch at
    24 px with flips and small shifts, AdamW and a one-cycle schedule (fixed length, so a CPU budget
    is an epoch count). ``blur`` (from :func:`matching_blur`) is what the judge adds to every face it
    is later asked about. The seed fixes weights and batches without touching the global RNG."""
    if not len(training):
        raise ExaugError("no FER2013 faces to train the judge on")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = judge_network("fer-cnn", len(FER_EXPRESSIONS))
    steps_per_epoch = math.ceil(len(training) / batch_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(training.labels)
    started = time.perf_counter()
    network.train()
    with progress_bar("batches", disable=not show_progress) as bar:
        task = bar.add_task("training the FER2013 judge", total=epochs * steps_per_epoch, info="")
        for _ in range(epochs):
            order = rng.permutation(len(training))
            for start in range(0, len(order), batch_size):
                rows = np.sort(order[start:start + batch_size])
                x = augment(judge_input(training.faces(rows), size=INPUT_SIZE, standardize=True), generator)
                loss = F.cross_entropy(network(x), labels[rows], label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    meta = {"arch": "fer-cnn", "image_size": FER_SIZE, "input_size": INPUT_SIZE, "standardize": True, "blur": blur,
            "expressions": list(FER_EXPRESSIONS), "data": "fer2013",
            "faces": len(training), "epochs": epochs, "seed": seed, "frame": frame,
            "training_seconds": round(time.perf_counter() - started, 1), "exaug_version": __version__}
    return Judge(network.eval(), meta)


def accuracy(judge: Judge | JudgePanel, split: FerSplit) -> dict[str, float]:
    """Overall and per-class accuracy (recall) of ``judge`` on a FER split, its own 48 px crops as they are
    (seen through the judge's view, blur included: meant for the sharp test splits)."""
    predicted = judge.predict(split.faces(), framed=False)
    truth = torch.tensor([EXPRESSIONS.index(FER_EXPRESSIONS[label]) for label in split.labels])
    hits = predicted == truth
    result = {"overall": round(hits.float().mean().item(), 4)}
    for index, name in enumerate(FER_EXPRESSIONS):
        mine = torch.from_numpy(split.labels == index)
        result[name] = round(hits[mine].float().mean().item(), 4) if mine.any() else float("nan")
    return result

