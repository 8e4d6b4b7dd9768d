"""``exaug video``: the faces of every frame in another expression, pasted back, audio kept.

Faces are found by MTCNN on keyframes and followed between them by the face mesh, whose smoothed
geometry gives each face's alignment (:mod:`exaug.faces.follow`): the transform, and so the edited
face, moves smoothly with the head instead of jittering with a detector, at a fraction of the cost
of detecting every frame. Frames are processed in chunks so generation and blending run batched;
the next chunk is decoded and followed in a thread while this one is rendered, once its faces are
settled (a face found late is followed back into earlier frames); the last chunks, settled only when
following ends, are rendered two at a time. Each face is edited
at about its own size in the frame and goes back through the inverse warp under a feathered mask
(:mod:`exaug.pipelines.video_faces`); frames without faces pass through untouched. With a time
span (:mod:`exaug.pipelines.timespan`) only its frames are searched and edited; in its ramps both
the intensity and the opacity of the pasted face follow the ease, so the re-rendered face fades in
rather than popping in while the expression grows.
"""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from exaug.errors import ExaugError
from exaug.faces.detect import DetectionOptions
from exaug.faces.follow import FaceFollower, FollowOptions
from exaug.faces.mesh import FaceMesh
from exaug.faces.track import TrackedFace
from exaug.io.images import save_png
from exaug.io.outputs import check_not_input, check_sheet_path
from exaug.io.video import FrameChunk, VideoWriter, check_container, probe, read_frames
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.like import check_intensity, load_reference
from exaug.pipelines.stages import StageTimer, half_the_threads, in_background
from exaug.pipelines.timespan import TimeSpan
from exaug.pipelines.video_faces import EditedFaces, FaceEditor
from exaug.pipelines.video_sheet import BeforeAfter
from exaug.progress import progress_bar

STAGES = ("decode", "detect", "track", "generate", "blend", "encode")


@dataclass
class VideoOptions:
    emotion: str = "happy"
    like: Path | None = None  # a photo: every face takes its (largest) face's expression instead of ``emotion``
    intensity: float = 1.0  # 0..1.5 for the guided model, 0..1 for StarGAN (see pipelines.like)
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    crf: int = 18
    preset: str = "medium"
    side_by_side: bool = False
    # Frames rendered together while the next chunk is followed. Small, so the two overlap from the
    # start to the end of the clip (the first chunk is followed, the last rendered, alone); batching
    # more faces gains little on a CPU. On the 2-core CPU, the 720x480 MJPEG clip took 8.3-9.0 s at 4
    # frames vs 8.8-9.3 s at 16, the 1080p clip 16.4-16.6 s vs 18.4-19.1 s.
    chunk_size: int = 4
    span: TimeSpan = field(default_factory=TimeSpan)
    detect_every: int = 10
    preview: Path | None = None  # also a PNG sheet: an edited face before and after at moments of the clip
    preview_rows: int = 4


@dataclass
class VideoSummary:
    output: Path
    frames: int = 0
    faces_edited: int = 0  # faces found and changed
    faces_per_frame: list[int] = field(default_factory=list)  # faces found, edited or left as they are
    detections: int = 0  # frames MTCNN ran on whole
    crop_detections: int = 0  # frames it ran on only around faces the mesh lost
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reference: dict | None = None  # the --like photo (path, sha256, face box), also in the video's tags
    preview: Path | None = None  # the before/after sheet written (none when no face was edited)

    @property
    def faces_left(self) -> int:
        """Faces found but left as they are: in profile or tilted steeply (the guided model's :meth:`moves`)."""
        return sum(self.faces_per_frame) - self.faces_edited

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def edit_video(input_path: Path | str, output: Path | str, generator: ExpressionGenerator,
               options: VideoOptions | None = None, *, show_progress: bool = True) -> VideoSummary:
    """Write ``output``: ``input_path`` with every face in ``options.emotion``, or in the expression of
    the face in ``options.like``, recorded in the video's ``exaug_like`` tag (JSON) and the summary."""
    options = options or VideoOptions()
    input_path, output = Path(input_path), Path(output)
    check_not_input(input_path, output)
    check_container(output)
    if options.preview:  # before the work, not after it
        check_sheet_path(options.preview, input_path, output)
    info = probe(input_path)
    span = options.span
    if span.start is not None and info.duration and span.start >= info.duration:
        raise ExaugError(f"{input_path}: --start {span.start:g} s is past the end of the video ({info.duration:.2f} s)")
    check_intensity(generator, options.intensity)
    reference = None if options.like is None else load_reference(options.like, generator, options.detection)
    device = generator.device
    timer = StageTimer(device)
    follower = FaceFollower(options.detection.detector(device, 1), FaceMesh(),
                            FollowOptions(detect_every=options.detect_every),
                            fps=float(info.fps) if info.fps else 25.0, timer=timer)
    editor = FaceEditor(generator, options.emotion, options.intensity,
                        like=None if reference is None else reference.face, measure_change=options.preview is not None)
    summary = VideoSummary(output, reference=None if reference is None else reference.record())
    sheet = None if options.preview is None else BeforeAfter(options.preview_rows, info.frames, float(info.fps or 25))
    tags = {} if reference is None else {"exaug_like": json.dumps(summary.reference)}
    started = time.perf_counter()
    width = 2 * info.width if options.side_by_side else info.width
    with VideoWriter(output, info, width=width, crf=options.crf, preset=options.preset, metadata=tags) as writer, \
            progress_bar("frames", disable=not show_progress) as bar:
        task = bar.add_task("editing", total=info.frames or None, info="")

        def edit(chunk: FrameChunk, frames: torch.Tensor, weights: np.ndarray,
                 tracked: list[list[TrackedFace]]) -> list[EditedFaces]:
            with timer("generate"):
                return editor.edit(frames, tracked, weights)

        def write(chunk: FrameChunk, frames: torch.Tensor, weights: np.ndarray, tracked: list[list[TrackedFace]],
                  edited: list[EditedFaces]) -> None:
            with timer("blend"):
                result = chunk.frames  # a chunk without faces passes through untouched
                if edited:
                    if sheet is not None:
                        sheet.before(summary.frames, chunk.times, chunk.frames, edited)
                    canvas = frames.clone() if options.side_by_side and frames.device.type == "cpu" else frames
                    result = editor.paste(canvas, edited, weights).cpu().numpy()
                    if sheet is not None:
                        sheet.after(result)
                if options.side_by_side:
                    result = np.concatenate([chunk.frames, result], axis=2)
            with timer("encode"):
                writer.write(result, chunk.pts)
            summary.frames += len(chunk)
            summary.faces_edited += sum(len(group.frame_index) for group in edited)
            summary.faces_per_frame += [len(found) for found in tracked]
            bar.update(task, advance=len(chunk), info=f"{summary.faces_edited} faces")

        def followed() -> Iterator[list[tuple[FrameChunk, torch.Tensor, np.ndarray, list[list[TrackedFace]]]]]:
            first_time: float | None = None
            # Decoded ahead in a thread of its own (its "decode" seconds are that thread's): following
            # is the longer side once the painter runs in bf16, and decoding, converting to RGB
            # included, is work it can shed (the MJPEG clip: 6.0-6.5 s instead of 6.6-6.8 s).
            # A chunk is handed on once its faces are settled: a face found later is followed back
            # into the frames before (see exaug.faces.follow), so rendering lags following by
            # ``detect_every`` frames (10 at the most).
            waiting: deque[tuple[int, tuple]] = deque()  # (frames followed through this chunk, chunk)
            for chunk in in_background(timer.timed(read_frames(input_path, options.chunk_size), "decode")):
                frames = torch.from_numpy(chunk.frames).to(device, non_blocking=True)
                first_time = chunk.times[0] if first_time is None else first_time
                weights = span.weights(chunk.times - first_time)
                active = np.flatnonzero(weights > 0)  # frames outside the span are not searched
                if not len(active):  # nor followed back into: the frames before are settled now, not
                    follower.settle()  # at the end of a long clip past --end
                tracked: list[list[TrackedFace]] = [[] for _ in range(len(chunk))]
                for index, faces in zip(active, follower.update_many(frames[active], chunk.times[active])):
                    tracked[index] = faces
                waiting.append((follower.frames, (chunk, frames, weights, tracked)))
                while waiting and waiting[0][0] <= follower.settled:
                    yield [waiting.popleft()[1]]
            if waiting:  # following is done: the last chunks are handed on together
                yield [item for _, item in waiting]

        # Following is sequential (each frame's crops come from the last); rendering a chunk is not:
        # the next chunk is followed while this one is rendered, each on half the cores. The last
        # chunks, which wait for following's end (up to ``follow_back`` frames), are edited two at a
        # time, the second on the half of the cores following no longer uses (the MJPEG clip's last
        # 0.7 s were one core's).
        with ThreadPoolExecutor(1, "exaug-render", initializer=torch.set_num_threads,
                                initargs=(half_the_threads(),)) as helper:
            for items in in_background(followed(), split_cores=device.type == "cpu"):
                for first, second in zip(items[::2], items[1::2] + [None]):
                    ahead = None if second is None else helper.submit(edit, *second)
                    write(*first, edit(*first))
                    if ahead is not None:
                        write(*second, ahead.result())
    summary.seconds = time.perf_counter() - started
    summary.detections, summary.crop_detections = follower.detections, follower.crop_detections
    summary.stage_seconds = {stage: timer.seconds.get(stage, 0.0) for stage in STAGES}
    if sheet is not None and (picture := sheet.sheet()) is not None:
        save_png(picture, options.preview)
        summary.preview = options.preview
    return summary
