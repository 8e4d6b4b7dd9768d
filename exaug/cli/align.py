"""``exaug align INPUT [-o OUTPUT]``."""

from __future__ import annotations

from pathlib import Path

import typer

from exaug.cli.common import (DEVICE, FACES, MAX_PIXELS, MAX_SIDE, MIN_FACE_SIZE, OVERWRITE, QUIET, THRESHOLD,
                              DeviceChoice, FacesChoice, TemplateChoice, command_line, detection_options,
                              print_summary)
from exaug.progress import console
from exaug.io.outputs import default_output
from exaug.pipelines.align import AlignOptions, align_dataset


def align_command(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="Folder of images, of identity folders, or of expression folders."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="A .h5/.hdf5 file, or a folder of PNGs with manifest.csv; default: INPUT's "
                                     "name + .aligned.h5 in the current folder."),
    template: TemplateChoice = typer.Option(TemplateChoice.exaug, help="exaug (128px, for the GAN) or arcface (112px, face recognition)."),
    size: int = typer.Option(None, help="Output size in pixels (default: the template's)."),
    faces: FacesChoice = FACES,
    min_face_size: int = MIN_FACE_SIZE,
    threshold: float = THRESHOLD,
    max_side: int = MAX_SIDE,
    batch_size: int = typer.Option(16, min=1, help="Images detected together."),
    workers: int = typer.Option(4, min=1, help="Threads decoding images ahead of detection."),
    mesh: bool = typer.Option(False, "--mesh", help="Also store each face's 468-point face mesh (dataset 'mesh', source pixels)."),
    preview: Path = typer.Option(None, "--preview", help="Also write a PNG sheet of the first 32 faces, each under "
                                                          "its identity."),
    max_pixels: int = MAX_PIXELS,
    device: DeviceChoice = DEVICE,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
) -> None:
    """Detect and align every face under INPUT (5-point similarity alignment)."""
    options = AlignOptions(template=template.value, size=size, device=device.value,
                           detection=detection_options(faces, min_face_size, threshold, max_side),
                           batch_size=batch_size, workers=workers, mesh=mesh, max_pixels=max_pixels, preview=preview)
    output = output or default_output(input_path, "aligned", ".h5")
    summary = align_dataset(input_path, output, options, overwrite=overwrite, command=command_line(), show_progress=not quiet)
    print_summary(summary)
    if preview:
        console.print(f"preview: {preview}", highlight=False)
