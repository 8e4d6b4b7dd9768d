"""Stages shared by the pipelines: decode images ahead of use, then detect and align them.

Decoding a JPEG costs about as much CPU time as detecting faces in it, and both can wait on disk,
so images are decoded by a thread pool a few batches ahead (PIL releases the GIL while decoding),
and :func:`in_background` lets the consumer of a stage (the generator on the GPU) run while the
stage prepares the next batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from exaug.errors import ImageLoadError
from exaug.faces.align import AlignedFaces, FaceAligner
from exaug.faces.detect import FaceDetector, ImageFaces
from exaug.faces.mesh import MeshFitter
from exaug.io.images import load_image
from exaug.io.sources import Source
from exaug.io.store import FaceRows, open_writer
from exaug.progress import progress_bar

T = TypeVar("T")
NO_FACE = "no face found"


@dataclass
class LoadedImage:
    source: Source
    pixels: np.ndarray | torch.Tensor | None  # HxWx3 uint8 (pinned tensor on CUDA), None when unreadable
    error: str | None = None


def _load(source: Source, pin_memory: bool) -> LoadedImage:
    try:
        pixels = load_image(source.path)
    except ImageLoadError as err:
        return LoadedImage(source, None, err.reason)
    # Page-locked memory lets the copy to the GPU run asynchronously (non_blocking) with compute.
    return LoadedImage(source, torch.from_numpy(pixels).pin_memory() if pin_memory else pixels)


def load_batches(sources: Sequence[Source], batch_size: int, workers: int = 4, prefetch: int = 2, *,
                 pin_memory: bool = False) -> Iterator[list[LoadedImage]]:
    """Batches of decoded images, in order, at most ``prefetch`` batches decoded ahead; with
    ``pin_memory`` (CUDA only) each image is a pinned ``HxWx3 uint8`` tensor instead of an array."""
    starts = iter(range(0, len(sources), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="exaug-decode") as pool:
        pending: deque[list] = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append([pool.submit(_load, source, pin_memory) for source in sources[start:start + batch_size]])

        for _ in range(prefetch + 1):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            yield [future.result() for future in futures]


@dataclass
class FaceBatch:
    """One batch of sources after detection and alignment."""

    sources: list[Source]  # every source of the batch, failed ones included: all are done once committed
    aligned: AlignedFaces  # aligned.image_index indexes ``sources``
    detections: list[ImageFaces]  # per source (empty for failures)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    meshes: torch.Tensor | None = None  # (n, 468, 3) per aligned face, source pixels, when asked for


def detect_and_align(batches: Iterable[list[LoadedImage]], detector: FaceDetector, aligner: FaceAligner,
                     mesher: MeshFitter | None = None) -> Iterator[FaceBatch]:
    """Detect faces in each decoded batch and align them (and mesh them, given a ``mesher``);
    unreadable and faceless images become failures."""
    for batch in batches:
        readable = [item for item in batch if item.pixels is not None]
        detections = detector.detect([item.pixels for item in readable]) if readable else []
        by_source = {id(item): found for item, found in zip(readable, detections)}
        per_source = [by_source.get(id(item), ImageFaces.empty()) for item in batch]
        failures = [(item.source.relpath, item.error) for item in batch if item.error]
        failures += [(item.source.relpath, NO_FACE) for item, found in zip(batch, per_source)
                     if item.pixels is not None and len(found) == 0]
        images = [item.pixels if item.pixels is not None else np.zeros((1, 1, 3), np.uint8) for item in batch]
        aligned = aligner.align(images, per_source)
        meshes = mesher.fit(images, per_source).landmarks if mesher else None
        yield FaceBatch([item.source for item in batch], aligned, per_source, failures, meshes)


def in_background(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Run ``items`` in a thread, ``depth`` ahead of the consumer; its exceptions re-raise here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((True, finished))
        except BaseException as err:  # handed to the consumer, which re-raises it
            slots.put((False, err))

    thread = threading.Thread(target=produce, name="exaug-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                raise item
            if item is finished:
                return
            yield item
    finally:
        stop.set()


class StageTimer:
    """Seconds spent per stage; waits for the GPU at each boundary so its time lands where it is spent."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def timed(self, items: Iterable[T], stage: str) -> Iterator[T]:
        """Charge the time spent producing each item of ``items`` to ``stage``."""
        iterator = iter(items)
        while True:
            with self(stage):
                item = next(iterator, None)
            if item is None:
                return
            yield item


@dataclass
class RunSummary:
    """What a run did, for the summary table and for tests."""

    output: Path
    sources: int = 0  # images found under INPUT (this shard's)
    resumed: int = 0  # of those, done by an earlier run and skipped
    faces: int = 0  # rows written by this run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, reason), this run
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return (self.sources - self.resumed) / self.seconds if self.seconds else 0.0


def write_face_table(output: Path, sources: list[Source], batches_for: Callable[[list[Source]], Iterable[FaceBatch]],
                     rows_of: Callable[[FaceBatch], FaceRows], *, run_key: dict[str, Any], attrs: dict[str, Any],
                     overwrite: bool, description: str, show_progress: bool) -> RunSummary:
    """The run loop of align and augment: skip what an earlier run finished, then commit each
    batch's rows (and the sources it completes) atomically, so a killed run resumes here."""
    summary = RunSummary(output, sources=len(sources))
    started = time.perf_counter()
    with open_writer(output, run_key=run_key, attrs=attrs, overwrite=overwrite) as writer:
        todo = [source for source in sources if source.relpath not in writer.done_sources]
        summary.resumed = len(sources) - len(todo)
        with progress_bar("images", disable=not show_progress) as bar:
            task = bar.add_task(description, total=len(todo), info="")
            for batch in in_background(batches_for(todo)):
                rows = rows_of(batch)
                writer.commit(rows, done=[source.relpath for source in batch.sources], failures=batch.failures)
                summary.faces += len(rows.identity)
                summary.failures += batch.failures
                bar.update(task, advance=len(batch.sources), info=f"{summary.faces} faces")
        writer.finish()
    summary.seconds = time.perf_counter() - started
    return summary
