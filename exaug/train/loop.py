"""``exaug train``: the loop around :class:`~exaug.train.trainer.Trainer` and the files of a run.

RUN_DIR holds ``config.json``, ``metrics.jsonl`` (one JSON object per log step: losses, lr, it/s),
``samples/step-NNNNNNN.png``, ``checkpoints/step-NNNNNNN.{generator,state}.pt`` (the newest
``keep`` pairs) and ``latest``, naming the newest pair. Files are written by rank 0 only, and
atomically, so a run killed at any moment resumes from its last checkpoint.

Ctrl-C (or SIGTERM, as schedulers send before preempting) finishes the current step, saves a
checkpoint on every rank's agreement and raises :class:`TrainingInterrupted`; a second Ctrl-C stops
at once without saving.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.io.atomic import atomic_write, make_folder
from exaug.model.checkpoint import (generator_metadata, load_state, read_latest, save_generator,
                                    save_state, write_latest)
from exaug.io.images import save_png
from exaug.model.generator import ExpressionGenerator
from exaug.progress import console, progress_bar
from exaug.train.config import TrainConfig
from exaug.train.faceset import TrainSampler, train_loader, load_faces, sample_positions, split_validation
from exaug.train.distributed import World, unwrap
from exaug.train.sheets import sample_sheet
from exaug.train.trainer import Trainer

METRICS_FILE = "metrics.jsonl"
MAX_PROCESSES = 1000  # seeds stay distinct per rank for worlds up to this size
RESUME_SEED_STRIDE = 7919  # a prime above MAX_PROCESSES: (rank, resumed step) pairs never share a seed
VALIDATION_LIMIT = 512  # validation faces scored for the source estimator's accuracy

StepCallback = Callable[[int, dict[str, float]], None]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C/SIGTERM after saving ``checkpoint`` at ``step``; the CLI exits 130."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}; saved {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop reads between steps."""

    def __enter__(self) -> StopRequest:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        console.print("[yellow]stopping after this step and saving a checkpoint (Ctrl-C again: stop now, unsaved)[/]")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, *, resume: bool = False, on_step: StepCallback | None = None,
          data: Path | str | None = None) -> Path:
    """Train (or with ``resume``, continue the run in ``config.output``); returns the inference file.

    Reads the faces at ``data`` (default ``config.data``): a face table, or ready-cropped faces
    (``config.align`` False). A folder of raw photos must be aligned first;
    :func:`exaug.pipelines.training.train_model` does that and passes its aligned cache as ``data``.
    ``on_step(step, losses)`` is called after every iteration on every rank (losses as floats).
    Raises :class:`TrainingInterrupted` after saving when stopped by Ctrl-C or SIGTERM.
    """
    world = World.from_env(config.device)
    try:
        return TrainingRun(config, world, resume, Path(data or config.data)).train(on_step)
    finally:
        world.close()


class TrainingRun:
    """One run's state between the loop and its files."""

    def __init__(self, config: TrainConfig, world: World, resume: bool, data: Path):
        self.config, self.world = config, world
        self.run_dir = Path(config.output)
        latest = read_latest(self.run_dir)
        if resume and latest is None:
            raise ExaugError(f"{self.run_dir}: no checkpoint to resume from")
        if not resume and latest is not None:
            raise ExaugError(f"{self.run_dir}: already holds a training run; continue it with --resume "
                             f"{self.run_dir} or choose another --output")
        state = load_state(self.run_dir) if resume else None
        self.start = state["step"] if state else 0
        if config.iters < self.start:
            raise ExaugError(f"{self.run_dir}: has trained {self.start} iterations already; "
                             f"--iters {config.iters} would undo them")
        torch.manual_seed(process_seed(config.seed, world.rank))

        faces = load_faces(data, image_size=config.image_size, crops=not config.align,
                           show_progress=world.is_main, source=config.data)
        train_pos, val_pos, note = split_validation(faces, config.val_subjects, config.seed)
        if world.is_main:  # only once the data and its split are known to be usable: a refused run leaves no folder
            make_folder(self.run_dir)
            config.save(self.run_dir)  # on resume too: an extended --iters is the run's schedule from now on
        self.train_set = faces.subset(train_pos)
        self.val_set = faces.subset(val_pos) if len(val_pos) else self.train_set
        self.template = faces.template
        validation = {**faces.subset(val_pos).summary(), "note": note}
        if (faces.subjects != "").any():  # a subject split: `exaug eval` holds out the same people
            validation["held_out_subjects"] = faces.subset(val_pos).known_subjects()
        self.data_summary = {**self.train_set.summary(), "validation": validation}
        if world.is_main:
            console.print(f"training on {len(self.train_set)} faces from {faces.source}; {note}", highlight=False)

        self.trainer = Trainer(config, world.device, distributed=world.size > 1)
        if state:
            # Rank 0's RNG continues exactly; the others get a fresh stream (their states are not saved).
            try:
                self.trainer.load_state_dict(state, restore_rng=world.is_main)
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                raise ExaugError(f"{self.run_dir}: its training state does not match its options: {err}") from err
            if not world.is_main:
                torch.manual_seed(process_seed(config.seed, world.rank, resumed_at=self.start))
        picks = sample_positions(self.val_set, config.n_samples, config.seed)
        self.sample_faces = self.val_set.faces_at(picks, self.config.image_size)
        self.val_faces = self.val_set.faces_at(np.arange(min(len(self.val_set), VALIDATION_LIMIT)),
                                              self.config.image_size)
        self.val_labels = torch.from_numpy(self.val_set.labels[:VALIDATION_LIMIT])
        self.metrics = self.run_dir / METRICS_FILE
        if world.is_main and resume:
            keep_metrics_until(self.metrics, self.start)

    def train(self, on_step: StepCallback | None) -> Path:
        config, world, trainer = self.config, self.world, self.trainer
        if self.start >= config.iters:
            console.print(f"{self.run_dir} already finished ({self.start} of {config.iters} iterations)")
            return self.run_dir / read_latest(self.run_dir)["generator"]
        batches = TrainSampler(self.train_set.labels, config.batch_size, seed=config.seed, rank=world.rank,
                               world=world.size, balance=config.balance, start_step=self.start)
        loader = train_loader(self.train_set, batches, workers=config.workers,
                              pin_memory=world.device.type == "cuda")
        window: dict[str, list[torch.Tensor]] = {}
        window_start, window_step = time.perf_counter(), self.start
        step, saved = self.start, None
        with StopRequest() as stop, progress_bar("it", disable=not world.is_main) as bar:
            task = bar.add_task("training", total=config.iters, completed=step, info="")
            for images, labels in loader:
                lr = trainer.set_learning_rate(step)
                losses = trainer.step(images, labels, step)
                step += 1
                for name, value in losses.items():
                    window.setdefault(name, []).append(value)
                if on_step is not None:
                    on_step(step, {name: float(value) for name, value in losses.items()})
                stopping = world.any(stop.requested)
                finished = step >= config.iters
                bar.update(task, completed=step)
                if step % config.log_every == 0 or finished or stopping:
                    now = time.perf_counter()
                    row = self._log(step, lr, window, (step - window_step) / (now - window_start))
                    bar.update(task, info=_progress_info(row))
                    window, window_start, window_step = {}, now, step
                paused = time.perf_counter()
                if step % config.sample_every == 0 or finished:
                    self._sample(step)
                if step % config.save_every == 0 or finished or stopping:
                    saved = self._save(step)
                window_start += time.perf_counter() - paused  # it/s measures training, not file writing
                if stopping:
                    if world.is_main:
                        console.print(f"[yellow]interrupted at step {step}[/]: saved {saved}; "
                                      f"continue with --resume {self.run_dir}", highlight=False)
                    raise TrainingInterrupted(step, saved)
                if finished:
                    return saved
        raise AssertionError("the batch stream is endless")

    def _log(self, step: int, lr: float, window: dict[str, list[torch.Tensor]], its: float) -> dict[str, Any]:
        row = {"step": step, "lr": lr, "it_s": round(its, 4),
               "images_s": round(its * self.config.batch_size * self.world.size, 2)}
        row.update({name: float(torch.stack(values).mean()) for name, values in window.items()})
        if self.world.is_main:
            self._append_metrics(row)
        return row

    def _append_metrics(self, row: dict[str, Any]) -> None:
        try:
            with self.metrics.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        except OSError as err:
            raise ExaugError(f"{self.metrics}: cannot write ({err.strerror or err})") from err

    def _inference(self, step: int) -> ExpressionGenerator:
        meta = generator_metadata(self.config.model, expressions=EXPRESSIONS, template=self.template,
                                  data=self.data_summary, steps=step,
                                  training={"iters": self.config.iters, "batch_size": self.config.batch_size,
                                            "processes": self.world.size, "balance": self.config.balance})
        return ExpressionGenerator(unwrap(self.trainer.generator), unwrap(self.trainer.source_estimator), meta)

    def _sample(self, step: int) -> None:
        """Rank 0 writes the sample sheet and the source estimator's validation accuracy."""
        if not self.world.is_main:
            return
        generator = self._inference(step)
        sheet = sample_sheet(generator, self.sample_faces)
        save_png(sheet, self.run_dir / "samples" / f"step-{step:07d}.png")
        predicted = generator.estimate_expressions(self.val_faces).argmax(dim=1)
        accuracy = float((predicted == self.val_labels).float().mean()) if len(predicted) else float("nan")
        self._append_metrics({"step": step, "val_source_accuracy": round(accuracy, 4)})

    def _save(self, step: int) -> Path:
        """Rank 0 writes the checkpoint pair, then the pointer, then prunes; everyone waits for it."""
        checkpoints = self.run_dir / "checkpoints"
        generator_path = checkpoints / f"step-{step:07d}.generator.pt"
        if self.world.is_main:
            state_path = checkpoints / f"step-{step:07d}.state.pt"
            save_generator(generator_path, self.trainer.generator, self.trainer.source_estimator,
                           self._inference(step).meta)
            save_state(state_path, {**self.trainer.state_dict(step), "config": json.dumps(asdict(self.config))})
            write_latest(self.run_dir, step, generator_path, state_path)
            for old in sorted(checkpoints.glob("step-*.state.pt"))[:-self.config.keep]:
                old.unlink()
                old.with_name(old.name.replace(".state.pt", ".generator.pt")).unlink(missing_ok=True)
        self.world.barrier()
        return generator_path


def keep_metrics_until(metrics: Path, step: int) -> None:
    """Drop the rows of ``metrics`` (a metrics.jsonl) logged after ``step``, the checkpoint being
    resumed, so each step appears once, and a last line torn by a kill mid-write."""
    if not metrics.exists():
        return
    lines = [line for line in metrics.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError) as err:
            if number == len(lines):
                break
            raise ExaugError(f"{metrics}: line {number} is damaged ({err}); delete it to resume") from err
        if logged <= step:
            rows.append(line)
    text = "".join(line + "\n" for line in rows)
    atomic_write(metrics, lambda handle: handle.write(text.encode()))


def process_seed(seed: int, rank: int, resumed_at: int = 0) -> int:
    """The global RNG seed of one process: each rank draws its own targets, flips and interpolations,
    and a rank whose RNG state was not saved (any but rank 0) starts a resumed run on a stream of
    its own rather than replaying the draws it made from step 0."""
    return seed * MAX_PROCESSES + rank + RESUME_SEED_STRIDE * resumed_at


def _progress_info(row: dict[str, Any]) -> str:
    shown = [("D", "d_loss"), ("G", "g_loss"), ("rec", "g_loss_rec"), ("gp", "d_loss_gp")]
    return "  ".join(f"{label} {row[key]:.3f}" for label, key in shown if key in row)
