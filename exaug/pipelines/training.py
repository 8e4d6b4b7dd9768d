"""``exaug train``'s pipeline: the data is prepared before training, as StarGAN's ``main.py`` builds
its loader before the solver. Training reads aligned faces (or ready-cropped ones); a folder of raw
photos is aligned here first, into a cache keyed by its files, the face size and the template, so
later runs (and ``exaug eval`` on the same folder) reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from exaug.errors import ExaugError
from exaug.faces.detect import DetectionOptions
from exaug.io.atomic import atomic_write, make_folder
from exaug.io.sources import discover_sources
from exaug.io.store import is_face_table
from exaug.model.checkpoint import GUIDED_RUN_FILES, LATEST
from exaug.pipelines.align import AlignOptions, align_dataset
from exaug.progress import console
from exaug.train import TrainConfig
from exaug.train.guided import GuidedTrainConfig
from exaug.train.distributed import World
from exaug.train.loop import StepCallback, TrainingInterrupted, train


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
                  device: torch.device, is_main: bool = True, show_progress: bool = True, mesh: bool = False) -> Path:
    """What training reads for ``data``: ``data`` itself when it is a file, a face table, or (without
    ``align``) a folder of ready-cropped faces; else its aligned cache. Only the main process aligns
    (and shows progress), resumably: a finished cache is only checked, an interrupted one completed.
    Other processes must wait for it (a barrier) before reading the cache."""
    path = Path(data)
    if not align or not path.is_dir() or is_face_table(path):
        return path
    cache = _aligned_cache(path, image_size, template, cache_dir, mesh)
    if is_main:
        if show_progress:
            console.print(f"reading {path}'s aligned faces from {cache}" if cache.exists() else
                          f"aligning {path} (cached in {cache}; later runs reuse it)", highlight=False)
        options = AlignOptions(template=template, size=image_size, device=str(device),
                               detection=DetectionOptions(faces="largest"), mesh=mesh)
        align_dataset(path, cache, options, command=f"exaug train {path}", show_progress=show_progress)
    return cache


def _aligned_cache(path: Path, image_size: int, template: str, cache_dir: str | None, mesh: bool = False) -> Path:
    """Cache file named by what the aligned faces depend on: the input's files, size, template (and meshes)."""
    root = Path(cache_dir or os.environ.get("EXAUG_CACHE") or Path.home() / ".cache" / "exaug") / "aligned"
    digest = hashlib.sha256(f"{path.resolve()}|{image_size}|{template}{'|mesh' if mesh else ''}".encode())
    for source in discover_sources(path):
        stat = source.path.stat()
        digest.update(f"|{source.relpath}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return root / f"{digest.hexdigest()[:24]}.h5"


GUIDED_RUN = "guided.json"  # a guided run's data, held-out subjects and options, for --resume


def is_guided_run(run: Path | str) -> bool:
    return (Path(run) / GUIDED_RUN).is_file()


def train_guided_model(data: Path | str, output: Path | str, config: GuidedTrainConfig, *, val_subjects: str = "auto",
                       device: str = "auto", cache_dir: str | None = None, show_progress: bool = True,
                       on_step: Callable[[int], None] | None = None) -> Path:
    """``exaug train --arch guided``: align DATA with meshes (cached), pair its CK+ sequences, hold out
    whole subjects, fit the geometry and train the painter; writes RUN/guided.generator.pt, a sample
    sheet of held-out faces and metrics.jsonl, and returns the inference file. RUN/guided.json and
    RUN/checkpoints/guided.state.pt let :func:`resume_guided_model` continue a stopped run."""
    run = Path(output)
    if is_guided_run(run) or (run / LATEST).exists():
        raise ExaugError(f"{run}: already holds a training run; continue it with --resume {run} "
                         "or choose another --output")
    cache_dir = None if cache_dir is None else str(Path(cache_dir).resolve())
    return _train_guided(run, str(Path(data).resolve()), config, val_subjects, device, cache_dir, show_progress,
                         on_step)


def resume_guided_model(run: Path | str, *, steps: int | None = None, device: str = "auto",
                        show_progress: bool = True, on_step: Callable[[int], None] | None = None) -> Path:
    """Continue the guided run in ``run`` from its last saved state with its own data and options
    (``steps``: a larger step count extends it); returns the inference file."""
    run = Path(run)
    try:
        settings = json.loads((run / GUIDED_RUN).read_text())
        config = GuidedTrainConfig.from_dict(settings["config"])
        data, val_subjects, cache_dir = (settings[key] for key in ("data", "val_subjects", "cache_dir"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExaugError(f"{run / GUIDED_RUN}: damaged run file ({type(err).__name__}: {err}); "
                         "start the run again elsewhere") from None
    if steps is not None:
        config = replace(config, steps=steps)
    return _train_guided(run, data, config, val_subjects, device, cache_dir, show_progress, on_step)


def _train_guided(run: Path, data: str, config: GuidedTrainConfig, val_subjects: str, device: str,
                  cache_dir: str | None, show_progress: bool, on_step: Callable[[int], None] | None) -> Path:
    from exaug.device import resolve_device
    from exaug.train.guided import checked_state, save_guided_run, split_subjects, train_guided
    from exaug.train.pairs import load_pairs

    target = resolve_device(device)
    aligned = training_data(data, align=True, image_size=config.painter.image_size, template="exaug",
                            cache_dir=cache_dir, device=target, show_progress=show_progress, mesh=True)
    pairs, neutral_meshes, neutral_subjects = load_pairs(aligned, source=data)
    held_out = split_subjects(sorted(set(pairs.subject)), val_subjects)
    train_pairs = pairs.select(torch.tensor([subject not in held_out for subject in pairs.subject]))
    neutral = neutral_meshes[torch.tensor([subject not in held_out for subject in neutral_subjects])]
    if not len(train_pairs):
        raise ExaugError(f"{data}: every subject with paired sequences is held out ({len(held_out)}); "
                         "train on more subjects, or give --val-subjects 0")
    state = run / GUIDED_RUN_FILES["state"]
    if state.exists():
        checked_state(state, config)  # a refused --resume changes none of the run's files
    created = not run.exists()
    make_folder(run)
    settings = {"data": data, "val_subjects": val_subjects, "cache_dir": cache_dir, "config": asdict(config)}
    atomic_write(run / GUIDED_RUN, lambda handle: handle.write(json.dumps(settings, indent=1).encode()))
    try:
        model = train_guided(train_pairs, neutral, config, log=run / "metrics.jsonl", device=target,
                             show_progress=show_progress, state=state, on_step=on_step)
    except TrainingInterrupted:
        console.print(f"continue with --resume {run}", highlight=False)
        raise
    except ExaugError:
        if not state.exists():  # refused before it trained: no run is left behind
            (run / GUIDED_RUN).unlink(missing_ok=True)
            if created and not any(run.iterdir()):
                run.rmdir()
        raise
    validation = pairs.select(torch.tensor([subject in held_out for subject in pairs.subject]))
    return save_guided_run(run, model, config, validation, data=data, held_out=sorted(held_out))
