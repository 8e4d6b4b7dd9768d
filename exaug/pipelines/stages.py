"""Stages shared by the pipelines: decode images ahead of use, then detect and align them.

Decoding a JPEG costs about as much CPU time as detecting faces in it, and both can wait on disk,
so images are decoded by a thread pool a few batches ahead (PIL releases the GIL while decoding),
and :func:`in_background` lets the consumer of a stage (the generator on the GPU) run while the
stage prepares the next batch.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Set as AbstractSet
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
from exaug.io.digest import file_stamp, same_file
from exaug.io.images import MAX_PIXELS
from exaug.io.sources import Source, load_source
from exaug.io.store import FaceRows, open_writer
from exaug.progress import console, progress_bar

T = TypeVar("T")
NO_FACE = "no face found"
SPLIT_SWITCH_INTERVAL = 0.001  # seconds: how soon a thread waiting for the GIL gets it (see in_background)


@dataclass
class LoadedImage:
    source: Source
    pixels: np.ndarray | torch.Tensor | None  # HxWx3 uint8 (pinned tensor on CUDA), None when unreadable
    error: str | None = None
    stamp: str | None = None  # the file's stamp, taken before reading (None when it could not be)


def _load(source: Source, pin_memory: bool, max_pixels: int) -> LoadedImage:
    """The stamp comes first: a file changed while it is read is then recorded as the older one, so
    the next run reads it again rather than keeping faces of a version it never saw."""
    try:
        stamp = file_stamp(source.path) if source.error is None else None
    except OSError:
        stamp = None
    try:
        pixels = load_source(source, max_pixels)
    except ImageLoadError as err:
        return LoadedImage(source, None, err.reason, stamp)
    # Page-locked memory lets the copy to the GPU run asynchronously (non_blocking) with compute.
    return LoadedImage(source, torch.from_numpy(pixels).pin_memory() if pin_memory else pixels, stamp=stamp)


def decoded_batches(sources: Sequence[Source], batch_size: int, workers: int = 4, prefetch: int = 2, *,
                    pin_memory: bool = False, max_pixels: int = MAX_PIXELS) -> Iterator[list[LoadedImage]]:
    """Batches of decoded images, in order, at most ``prefetch`` batches decoded ahead; with
    ``pin_memory`` (CUDA only) each image is a pinned ``HxWx3 uint8`` tensor instead of an array.
    Images over ``max_pixels`` fail (see :func:`~exaug.io.images.load_image`)."""
    starts = iter(range(0, len(sources), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="exaug-decode") as pool:
        pending: deque[list] = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append([pool.submit(_load, source, pin_memory, max_pixels) for source in sources[start:start + batch_size]])

        for _ in range(prefetch + 1):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            yield [future.result() for future in futures]


@dataclass
class AlignedBatch:
    """One batch of sources after detection and alignment."""

    sources: list[Source]  # every source of the batch, failed ones included: all are done once committed
    aligned: AlignedFaces  # aligned.image_index indexes ``sources``
    detections: list[ImageFaces]  # per source (empty for failures)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    meshes: torch.Tensor | None = None  # (n, 468, 3) per aligned face, source pixels, when asked for
    stamps: dict[str, str] = field(default_factory=dict)  # relpath -> file stamp when read, where taken


def detect_and_align(batches: Iterable[list[LoadedImage]], detector: FaceDetector, aligner: FaceAligner,
                     mesher: MeshFitter | None = None) -> Iterator[AlignedBatch]:
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
        stamps = {item.source.relpath: item.stamp for item in batch if item.stamp}
        yield AlignedBatch([item.source for item in batch], aligned, per_source, failures, meshes, stamps)


BatchSource = Callable[[list[Source]], Iterator[AlignedBatch]]  # sources to do -> their aligned batches


def photo_batches(detector: FaceDetector, aligner: FaceAligner, batch_size: int, workers: int,
                  mesher: MeshFitter | None = None, max_pixels: int = MAX_PIXELS) -> BatchSource:
    """How align and augment turn photos into aligned batches: decoded ahead by ``workers`` threads
    (into pinned memory on CUDA), then detected and aligned ``batch_size`` at a time (and meshed)."""
    def batches_for(todo: list[Source]) -> Iterator[AlignedBatch]:
        return detect_and_align(decoded_batches(todo, batch_size, workers, pin_memory=detector.device.type == "cuda",
                                                max_pixels=max_pixels), detector, aligner, mesher)

    return batches_for


def in_background(items: Iterable[T], depth: int = 2, *, split_cores: bool = False) -> Iterator[T]:
    """Run ``items`` in a thread, ``depth`` ahead of the consumer; its exceptions re-raise here.

    With ``split_cores`` (work on the CPU), the thread and the consumer each run torch on half the
    CPU's threads until the consumer stops. Both at full width ask for twice the cores there are,
    and torch's threads then wait on each other; and even alone, one stage's small convolutions and
    the Python between its operations leave a second core idle much of the time. On the
    2-core machine, a 720x480 clip's video edit took 8.4-8.8 s instead of 9.5-9.9 s this way, and
    11.5-12.1 s with both at full width. Only where both sides are busy: with photos, detection
    dwarfs generation, and the split slowed align from 4.2-4.5 s to 6.0 s.

    However the consumer stops (done, an error, Ctrl-C), the thread is told to stop, closes
    ``items`` (so their own worker threads end) and is waited for: a thread still inside torch at
    interpreter exit aborts the process ("terminate called without an active exception").

    Both sides hand the GIL back and forth at every torch call; one that wants it back while the
    other runs Python waits up to the interpreter's switch interval (5 ms). With ``split_cores`` it
    is 1 ms while both run: the 720x480 clip's following and rendering, run together as threads, took
    4.7-4.85 s and 5.9-6.0 s instead of 5.0-5.3 s and 6.0-6.3 s (alone: 4.1 s and 2.7 s twice; as
    two processes, no slower than alone), and the whole edit 5.99-6.17 s instead of 6.09-6.70 s
    (alternating four times in separate processes)."""
    all_threads = torch.get_num_threads()
    threads = half_the_threads() if split_cores else all_threads
    slots: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    stop = threading.Event()

    def hand_over(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        torch.set_num_threads(threads)
        iterator = iter(items)
        try:
            for item in iterator:
                if not hand_over((True, item)):
                    return
            hand_over((True, finished))
        except BaseException as err:  # handed to the consumer, which re-raises it
            hand_over((False, err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="exaug-prefetch", daemon=True)
    torch.set_num_threads(threads)
    switch_interval = sys.getswitchinterval()
    if split_cores:
        sys.setswitchinterval(min(switch_interval, SPLIT_SWITCH_INTERVAL))
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
        thread.join()
        torch.set_num_threads(all_threads)
        sys.setswitchinterval(switch_interval)


def half_the_threads() -> int:
    """Torch's threads for one of two CPU-bound sides running at once (at least one)."""
    return max(1, torch.get_num_threads() // 2)


class StageTimer:
    """Seconds spent per stage; waits for the GPU at each boundary so its time lands where it is spent."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()  # stages may run in several threads at once

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            with self._lock:
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
    retried: int = 0  # of those, unreadable in an earlier run and read again (a face not found is not looked for again)
    changed: int = 0  # of those, changed since an earlier run read them, and read again
    gone: list[str] = field(default_factory=list)  # sources the output holds that INPUT no longer has (kept)
    faces: int = 0  # rows written by this run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, reason), this run
    crowded: list[str] = field(default_factory=list)  # sources of several faces given one identity, this run
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return (self.sources - self.resumed) / self.seconds if self.seconds else 0.0


def crowded_sources(rows: FaceRows) -> list[str]:
    """Sources whose several faces all took the one identity their folder or name gives: in a set
    made to train face recognition, strangers beside the person become that person."""
    originals = ~rows.synthetic & (rows.face > 0)
    return list(dict.fromkeys(source for source, identity, more in zip(rows.source, rows.identity, originals)
                              if more and identity))


def changed_sources(sources: Sequence[Source], done: set[str], stamps: dict[str, str]) -> set[str]:
    """The done sources whose files no longer hold what was read (:func:`~exaug.io.digest.same_file`):
    a photo replaced by a better one keeps the output's faces true to the input. A source without a
    stamp (an output of an earlier exaug, a face table's row) is taken as unchanged."""
    return {source.relpath for source in sources if source.relpath in done and source.relpath in stamps
            and not same_file(stamps[source.relpath], source.path)}


def write_face_table(output: Path, sources: list[Source], batches_for: BatchSource,
                     rows_of: Callable[[AlignedBatch], FaceRows], *, run_key: dict[str, Any], attrs: dict[str, Any],
                     overwrite: bool, description: str, show_progress: bool,
                     elsewhere: AbstractSet[str] = frozenset()) -> RunSummary:
    """The run loop of align and augment: skip what an earlier run finished, then commit each
    batch's rows (and the sources it completes) atomically, so a killed run resumes here.

    An image an earlier run could not read is tried again (it may have been fixed or finished
    copying since); one in which no face was found is not (the same detector finds none again),
    unless it changed since, as any image that changed is read again, its new faces replacing the
    old (:func:`changed_sources`). ``elsewhere``: the input's sources in other shards, which
    this output's are not missing from the input when shards' boundaries move."""
    summary = RunSummary(output, sources=len(sources))
    started = time.perf_counter()
    with open_writer(output, run_key=run_key, attrs=attrs, overwrite=overwrite) as writer:
        failed_before = writer.failures
        retry = {source for source, reason in failed_before.items() if reason != NO_FACE}
        finished = writer.done_sources  # a copy: taken once, not once per source
        changed = changed_sources(sources, finished - retry, writer.stamps)
        writer.redo(changed)
        skipped = finished - retry - changed
        todo = [source for source in sources if source.relpath not in skipped]
        summary.resumed = len(sources) - len(todo)
        summary.retried = len(retry.intersection(source.relpath for source in todo))
        summary.changed = len(changed)
        summary.gone = sorted(finished.difference(elsewhere, (source.relpath for source in sources)))
        with progress_bar("images", disable=not show_progress or not todo) as bar:
            task = bar.add_task(description, total=len(todo), info="")
            try:
                for batch in in_background(batches_for(todo)):
                    rows = rows_of(batch)
                    # An image that fails again as it did is left as recorded: with nothing new to
                    # commit a finished output is not rewritten (a re-run would copy it whole)
                    again = {source for source, reason in batch.failures
                             if failed_before.get(source) == reason and source not in changed}
                    done = [source.relpath for source in batch.sources if source.relpath not in again]
                    if done:
                        writer.commit(rows, done=done, failures=[f for f in batch.failures if f[0] not in again],
                                      stamps=batch.stamps)
                    summary.faces += len(rows.identity)
                    summary.failures += batch.failures
                    summary.crowded += crowded_sources(rows)
                    bar.update(task, advance=len(batch.sources), info=f"{summary.faces} faces")
            except KeyboardInterrupt:
                if summary.resumed or summary.faces or summary.failures:
                    console.print(f"[yellow]interrupted[/]: every finished batch is kept in {output}; "
                                  "run the same command again to resume", highlight=False)
                else:  # no batch was finished: saying it was kept in a file that is not there misleads
                    console.print("[yellow]interrupted[/] before the first batch was finished; nothing was "
                                  "written", highlight=False)
                raise
        writer.finish()
    summary.seconds = time.perf_counter() - started
    return summary
