"""``exaug train``'s pipeline: the data is prepared before training, as StarGAN's ``main.py`` builds
its loader before the solver. Training reads aligned faces (or ready-cropped ones); a folder of raw
photos is aligned here first, into a cache keyed by its files, the face size and the template, so
later runs (and ``exaug eval`` on the same folder) reuse it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from exaug.faces.detect import DetectionOptions
from exaug.io.sources import discover_sources
from exaug.io.store import is_face_table
from exaug.pipelines.align import AlignOptions, align_dataset
from exaug.progress import console
from exaug.train import TrainConfig
from exaug.train.distributed import World
from exaug.train.loop import StepCallback, train


def train_model(config: TrainConfig, *, resume: bool = False, on_step: StepCallback | None = None) -> Path:
    """What ``exaug train`` runs: :func:`training_data` (under torchrun the main process aligns while
    the others wait), then :func:`exaug.train.train` on the result; returns the inference file."""
    world = World.from_env(config.device)
    try:
        data = training_data(config.data, align=config.align, image_size=config.image_size,
                             template=config.template, cache_dir=config.cache_dir, device=world.device,
                             is_main=world.is_main)
        world.barrier()
        return train(config, resume=resume, on_step=on_step, data=data)
    finally:
        world.close()


def training_data(data: Path | str, *, align: bool, image_size: int, template: str, cache_dir: str | None,
                  device: torch.device, is_main: bool = True, show_progress: bool = True) -> Path:
    """What training reads for ``data``: ``data`` itself when it is a file, a face table, or (without
    ``align``) a folder of ready-cropped faces; else its aligned cache. Only the main process aligns
    (and shows progress), resumably: a finished cache is only checked, an interrupted one completed.
    Other processes must wait for it (a barrier) before reading the cache."""
    path = Path(data)
    if not align or not path.is_dir() or is_face_table(path):
        return path
    cache = _aligned_cache(path, image_size, template, cache_dir)
    if is_main:
        if show_progress:
            console.print(f"aligning {path} (cached in {cache}; later runs reuse it)", highlight=False)
        options = AlignOptions(template=template, size=image_size, device=str(device),
                               detection=DetectionOptions(faces="largest"))
        align_dataset(path, cache, options, command=f"exaug train {path}", show_progress=show_progress)
    return cache


def _aligned_cache(path: Path, image_size: int, template: str, cache_dir: str | None) -> Path:
    """Cache file named by what the aligned faces depend on: the input's files, size and template."""
    root = Path(cache_dir or os.environ.get("EXAUG_CACHE") or Path.home() / ".cache" / "exaug") / "aligned"
    digest = hashlib.sha256(f"{path.resolve()}|{image_size}|{template}".encode())
    for source in discover_sources(path):
        stat = source.path.stat()
        digest.update(f"|{source.relpath}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return root / f"{digest.hexdigest()[:24]}.h5"
