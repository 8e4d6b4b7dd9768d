"""``exaug augment INPUT [-o OUTPUT]`` and ``exaug merge PARTS... [-o OUT.h5]``."""

from __future__ import annotations

from pathlib import Path

import typer

from exaug.cli.common import (DEVICE, FACES, INTENSITY, LIKE_HELP, MAX_PIXELS, MAX_SIDE, MIN_FACE_SIZE, OVERWRITE,
                              QUIET, THRESHOLD, DeviceChoice, FacesChoice, command_line, detection_options,
                              print_summary)
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS, parse_expressions
from exaug.model.checkpoint import resolve_checkpoint
from exaug.model.default import model_path
from exaug.model.generator import ExpressionGenerator
from exaug.io.store import merge
from exaug.io.digest import file_hash
from exaug.io.outputs import default_output, merged_output, part_tag
from exaug.pipelines.augment import AugmentOptions, augment_dataset, shard_from_environment
from exaug.progress import console


def augment_command(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="Identity folders, a flat folder, or an aligned .h5 from exaug align."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="A .h5/.hdf5 file, or a folder (ImageFolder layout); default: INPUT's name "
                                     "+ .augmented.h5 in the current folder."),
    all_emotions: bool = typer.Option(False, "--all-emotions", help="All eight expressions (the default when --emotion is not given)."),
    emotion: str = typer.Option(None, "--emotion",
                                help=f"Comma list of targets, in any order (written in this one): {', '.join(EXPRESSIONS)}."),
    like: Path = typer.Option(None, "--like", metavar="REF", help=LIKE_HELP),
    model: Path = typer.Option(None, "--model", help="Generator file or training run folder (default: the bundled model)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Generator faces per forward pass (default: 128 on CUDA, 16 on CPU)."),
    size: int = typer.Option(None, "--size", help="Output face size in pixels (default: the model's)."),
    faces: FacesChoice = FACES,
    intensity: float = INTENSITY,
    preview: Path = typer.Option(None, "--preview", help="Also write a PNG sheet: rows faces, columns original + targets."),
    num_shards: int = typer.Option(None, "--num-shards", help="Split the sources into N shards (default: $WORLD_SIZE or 1)."),
    shard_index: int = typer.Option(None, "--shard-index", help="Which shard this run writes (default: $RANK or 0)."),
    workers: int = typer.Option(4, min=1, help="Threads decoding images ahead of detection."),
    max_pixels: int = MAX_PIXELS,
    min_face_size: int = MIN_FACE_SIZE,
    threshold: float = THRESHOLD,
    max_side: int = MAX_SIDE,
    device: DeviceChoice = DEVICE,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
) -> None:
    """Write every face of INPUT as it is and in each target expression (or in the expression of --like's face)."""
    # `--emotion ""` (an empty shell variable) is a list naming nothing, refused below, not a missing option
    if all_emotions and emotion is not None:
        raise ExaugError("give either --all-emotions or --emotion, not both")
    if like is not None and (all_emotions or emotion is not None):
        raise ExaugError("--like renders each face in the reference's expression: give it without --emotion "
                         "or --all-emotions")
    try:
        expressions = parse_expressions(emotion) if emotion is not None else list(EXPRESSIONS)
    except ValueError as err:
        raise ExaugError(f"--emotion: {err}") from err
    shards, index = shard_from_environment(num_shards, shard_index)
    if output is None:  # each shard its own part, as exaug merge expects
        output = default_output(input_path, part_tag("augmented", index, shards), ".h5")
    checkpoint = model_path(model)
    generator = ExpressionGenerator.load(checkpoint, device.value, max_batch=batch_size)
    options = AugmentOptions(expressions=expressions, like=like, intensity=intensity, size=size,
                             detection=detection_options(faces, min_face_size, threshold, max_side),
                             workers=workers, max_pixels=max_pixels, num_shards=shards, shard_index=index,
                             preview=preview)
    summary = augment_dataset(input_path, output, generator, file_hash(resolve_checkpoint(checkpoint)), options,
                              overwrite=overwrite, command=command_line(), show_progress=not quiet)
    print_summary(summary)
    if preview:
        console.print(f"preview: {preview}")


def merge_command(
    parts: list[Path] = typer.Argument(..., metavar="PARTS...",
                                       help="Finished outputs: a run's shards in any order (joined by shard index), "
                                            "other outputs in the order given."),
    output: Path = typer.Option(None, "--output", "-o",
                                help="The joined .h5 file (default, for parts named NAME.partKofN.h5 as augment "
                                     "names them without -o: NAME.h5 in the current folder)."),
) -> None:
    """Join the outputs of sharded runs into one HDF5 file with the same layout."""
    output = output or merged_output(parts)
    merge(parts, output)
    console.print(f"merged {len(parts)} part{'' if len(parts) == 1 else 's'} into {output}")
