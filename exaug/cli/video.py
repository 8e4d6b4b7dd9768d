"""``exaug video IN [-o OUT] --emotion happy``."""

from __future__ import annotations

from pathlib import Path

import typer

from exaug.cli.common import (DEVICE, FACES, INTENSITY, LIKE_HELP, MAX_SIDE, MIN_FACE_SIZE, QUIET, THRESHOLD,
                              DeviceChoice, FacesChoice, detection_options)
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS, canonical_expression
from exaug.io.outputs import default_output
from exaug.io.video import CONTAINERS
from exaug.model.default import model_path
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.timespan import TimeSpan, parse_time
from exaug.pipelines.video import STAGES, VideoOptions, edit_video
from exaug.progress import console


def video_command(
    input_path: Path = typer.Argument(..., metavar="IN", help="A video file (MP4, MOV, AVI, WebM, MKV...)."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="The edited video (H.264; .mp4, .mov or .mkv; default: IN's name and "
                                     "the expression, e.g. clip.happy.mp4, in the current folder)."),
    emotion: str = typer.Option(None, "--emotion", help=f"Target expression: {', '.join(EXPRESSIONS)}."),
    like: Path = typer.Option(None, "--like", metavar="REF", help=LIKE_HELP),
    intensity: float = INTENSITY,
    faces: FacesChoice = FACES,
    model: Path = typer.Option(None, "--model", help="Generator file or training run folder (default: the bundled model)."),
    crf: int = typer.Option(VideoOptions.crf, "--crf", min=0, max=51, help="x264 quality: lower is better and larger."),
    preset: str = typer.Option(VideoOptions.preset, "--preset", help="x264 speed preset (ultrafast ... veryslow)."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Write input and output next to each other."),
    preview: Path = typer.Option(None, "--preview", metavar="SHEET.png",
                                 help="Also write a PNG sheet: an edited face (a large one the edit changed "
                                      "most) before and after, at four moments spread over the clip."),
    start: str = typer.Option(None, "--start", metavar="TIME",
                              help="Edit from this time on (seconds or [HH:]MM:SS.s; default: the start)."),
    end: str = typer.Option(None, "--end", metavar="TIME",
                            help="Edit up to this time (seconds or [HH:]MM:SS.s; default: the end)."),
    ramp: float = typer.Option(0.0, "--ramp", min=0.0,
                               help="Seconds over which the edit eases in after --start and out before --end."),
    chunk_size: int = typer.Option(VideoOptions.chunk_size, "--chunk-size", min=1,
                                   help="Frames generated and blended together (the next chunk is followed "
                                        "meanwhile)."),
    detect_every: int = typer.Option(VideoOptions.detect_every, "--detect-every", min=1,
                                     help="Run face detection at least every N frames (new faces); "
                                          "between, faces are followed with the face mesh."),
    min_face_size: int = MIN_FACE_SIZE,
    threshold: float = THRESHOLD,
    max_side: int = MAX_SIDE,
    device: DeviceChoice = DEVICE,
    quiet: bool = QUIET,
) -> None:
    """Change the expression of the faces in a video (to --emotion, or --like's), frame-accurate, audio copied."""
    if (emotion is None) == (like is None):
        raise ExaugError("give one of --emotion and --like REF (the expression of a reference photo's face)")
    target = None if emotion is None else canonical_expression(emotion)
    if emotion is not None and target is None:
        raise ExaugError(f"--emotion: unknown expression {emotion!r}; use one of {', '.join(EXPRESSIONS)}")
    if output is None:
        suffix = input_path.suffix.lower() if input_path.suffix.lower() in CONTAINERS else CONTAINERS[0]
        output = default_output(input_path, target or f"like-{like.stem}", suffix)
    span = TimeSpan(None if start is None else parse_time(start, "--start"),
                    None if end is None else parse_time(end, "--end"), ramp)
    generator = ExpressionGenerator.load(model_path(model), device.value)
    options = VideoOptions(emotion=target or VideoOptions.emotion, like=like, intensity=intensity,  # like wins
                           detection=detection_options(faces, min_face_size, threshold, max_side), crf=crf,
                           preset=preset, side_by_side=side_by_side, chunk_size=chunk_size, span=span,
                           detect_every=detect_every, preview=preview)
    try:
        summary = edit_video(input_path, output, generator, options, show_progress=not quiet)
    except KeyboardInterrupt:  # the video is written whole or not at all (exaug.io.video.VideoWriter)
        console.print(f"[yellow]interrupted[/]: {output} was not written; run the command again", highlight=False)
        raise
    stages = ", ".join(f"{stage} {summary.stage_seconds[stage]:.1f}s" for stage in STAGES)
    console.print(f"{output}: {_frames(summary.frames)}, {summary.faces_edited} faces edited "
                  f"({summary.faces_left} more in profile or tilted steeply, left as they are), "
                  f"detection on {_frames(summary.detections)} "
                  f"(and around lost faces on {_frames(summary.crop_detections)}), "
                  f"{summary.frames_per_second:.1f} frames/s ({stages})", highlight=False)
    if preview is not None:
        console.print(f"preview: {preview}" if summary.preview else "preview: not written, no face was edited",
                      highlight=False)
    if summary.reference:
        console.print(f"expression like {summary.reference['path']} (sha256 {summary.reference['sha256'][:16]}..., "
                      f"face at {summary.reference['box']})", highlight=False)


def _frames(count: int) -> str:
    return f"{count} frame" if count == 1 else f"{count} frames"
