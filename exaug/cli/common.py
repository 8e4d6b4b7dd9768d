"""Options and output shared by the commands, so every command spells and reports them alike."""

from __future__ import annotations

import shlex
import sys
from dataclasses import MISSING, fields
from enum import Enum
from typing import Any

import typer
from rich.table import Table

from exaug.faces.detect import DetectionOptions
from exaug.io import images
from exaug.pipelines.stages import RunSummary
from exaug.progress import console


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class TemplateChoice(str, Enum):
    exaug = "exaug"
    arcface = "arcface"


class FacesChoice(str, Enum):
    all = "all"
    largest = "largest"


DEVICE = typer.Option(DeviceChoice.auto, "--device", help="auto picks CUDA when present.")
FACES = typer.Option(FacesChoice.all, "--faces", help="Every face of an image, or only the largest.")
MIN_FACE_SIZE = typer.Option(DetectionOptions.min_face_size, "--min-face-size", min=1,
                             help="Smallest face to keep, in pixels of the original image.")
THRESHOLD = typer.Option(DetectionOptions.threshold, "--threshold", min=0.0, max=1.0, help="Smallest detection probability to keep.")
MAX_SIDE = typer.Option(DetectionOptions.max_side, "--max-side", min=64,
                        help="Images are downscaled to this for detection (faces are cut from the original); "
                             "lower is faster and misses more small faces.")
MAX_PIXELS = typer.Option(images.MAX_PIXELS, "--max-pixels", min=1,
                          help="Larger images are skipped as likely decompression bombs; raise it for huge real scans.")
INTENSITY = typer.Option(1.0, "--intensity", min=0.0, max=1.5,
                         help="How far the face moves: 0 its expression removed (at rest), 1.0 the mean CK+ peak of "
                              "the target for this face's shape (or the reference's expression as it is), up to 1.5 "
                              "(half as large again). StarGAN models take 0 to 1 (1 the full target).")
LIKE_HELP = ("A photo of someone whose expression every face takes (its largest face, found with the detection "
             "options below); the geometry-guided model only.")
OVERWRITE = typer.Option(False, "--overwrite", help="Discard an existing output and start over (default: resume, "
                         "reading again the images changed since).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def detection_options(faces: FacesChoice, min_face_size: int, threshold: float, max_side: int) -> DetectionOptions:
    """What the face-finding commands' --faces, --min-face-size, --threshold and --max-side ask for."""
    return DetectionOptions(faces=faces.value, min_face_size=min_face_size, threshold=threshold, max_side=max_side)


def library_defaults(options: type) -> dict[str, Any]:
    """An options dataclass's defaults by field name, for a command's defaults, so the CLI and the
    library cannot disagree."""
    return {field.name: field.default for field in fields(options) if field.default is not MISSING}


def command_line() -> str:
    """The command as typed, stored in outputs so a file says how it was made."""
    return shlex.join(["exaug", *sys.argv[1:]])


def _first(names: list[str]) -> str:
    """The first three of ``names``, for a one-line note."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def print_summary(summary: RunSummary, what: str = "faces", max_failures: int = 20) -> None:
    """A table of what the run did, then each failed input with its reason."""
    table = Table(title=f"exaug: {summary.output}", show_header=False, title_justify="left")
    table.add_row("images found", str(summary.sources))
    if summary.resumed:
        table.add_row("already done (resumed)", str(summary.resumed))
    if summary.retried:
        table.add_row("unreadable before, read again", str(summary.retried))
    if summary.changed:
        table.add_row("changed since, read again", str(summary.changed))
    table.add_row(f"{what} written", str(summary.faces))
    table.add_row("failed or faceless images", str(len(summary.failures)))
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s)")
    console.print(table)
    if count := len(summary.crowded):
        console.print(f"[yellow]note[/]: {count} image{'s hold' if count > 1 else ' holds'} several faces, each "
                      f"given the image's identity ({_first(summary.crowded)}); --faces largest keeps one face "
                      "an image", highlight=False)
    if count := len(summary.gone):
        console.print(f"[yellow]note[/]: {summary.output} holds {count} image{'s' if count > 1 else ''} no longer "
                      f"in the input ({_first(summary.gone)}), kept as written; --overwrite starts over without "
                      "them", highlight=False)
    for source, reason in summary.failures[:max_failures]:
        console.print(f"  [yellow]skipped[/] {source}: {reason}", highlight=False)
    if len(summary.failures) > max_failures:
        console.print(f"  ... and {len(summary.failures) - max_failures} more (all are recorded in the output)")
