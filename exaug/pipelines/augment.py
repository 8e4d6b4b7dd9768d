"""``exaug augment``: every face of every identity, as it is and in each target expression.

Decoding and detection of the next batch run in background threads while the generator works on
the current one (on the GPU, under autocast); only the finished uint8 faces come back to the CPU,
once per batch, to be written. Rows are committed a batch of sources at a time through
:mod:`exaug.io.store`, so a killed run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from exaug import __version__
from exaug.device import launcher_variable
from exaug.errors import ExaugError, require_counts
from exaug.expressions import EXPRESSIONS, label_index, label_name
from exaug.faces.align import AlignedFaces, FaceAligner, check_face_size, resize_faces
from exaug.faces.detect import DetectionOptions, ImageFaces
from exaug.io.images import MAX_PIXELS, save_png
from exaug.io.outputs import check_not_input, check_sheet_path
from exaug.io.sheets import labelled_grid
from exaug.io.sources import Source, discover_sources
from exaug.io.store import FaceRows, HDF5_SUFFIXES, is_face_table, read_faces
from exaug.io.store.rows import REFERENCE_COLUMN
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.like import Reference, check_intensity, load_reference
from exaug.pipelines.stages import AlignedBatch, BatchSource, RunSummary, photo_batches, write_face_table


@dataclass
class AugmentOptions:
    expressions: list[str] = field(default_factory=lambda: list(EXPRESSIONS))
    # a photo: each face is rendered once with its (largest) face's expression instead of ``expressions``
    like: Path | None = None
    intensity: float = 1.0  # 0..1.5 for the guided model, 0..1 for StarGAN (see pipelines.like)
    size: int | None = None  # output face size; None: the model's
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    batch_size: int = 16  # source images per batch (detection and commit unit)
    workers: int = 4
    max_pixels: int = MAX_PIXELS  # larger images fail (decompression bombs)
    num_shards: int = 1
    shard_index: int = 0
    preview: Path | None = None
    preview_faces: int = 8

    def __post_init__(self) -> None:
        check_face_size(self.size)
        # A set of targets, in EXPRESSIONS' order however it was listed: rows come in the canonical order
        # the output format promises, and the same set has the same run key, so it resumes in any order.
        self.expressions = sorted(set(self.expressions), key=EXPRESSIONS.index)


def shard_from_environment(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """Explicit values win; under torchrun (or any launcher setting WORLD_SIZE/RANK) use those."""
    shards = num_shards if num_shards is not None else launcher_variable("WORLD_SIZE", 1, minimum=1)
    index = shard_index if shard_index is not None else launcher_variable("RANK", 0, minimum=0)
    require_counts({"--num-shards": shards})  # before the index's range, which a count below 1 leaves empty
    if not 0 <= index < shards:
        raise ExaugError(f"--shard-index must be in 0..{shards - 1} for --num-shards {shards} (got {index})")
    return shards, index


def shard_sources(sources: list[Source], num_shards: int, shard_index: int) -> list[Source]:
    """A contiguous block per shard: merging shards in index order gives exactly a single run's order."""
    count = len(sources)
    return sources[shard_index * count // num_shards:(shard_index + 1) * count // num_shards]


def augment_dataset(input_path: Path | str, output: Path | str, generator: ExpressionGenerator, model_hash: str,
                    options: AugmentOptions | None = None, *, overwrite: bool = False, command: str = "",
                    show_progress: bool = True) -> RunSummary:
    """Write originals and generated expressions for every face under ``input_path`` to ``output``.

    With ``options.like`` each face gets one generated row instead, in the reference face's
    expression: its label is -1 (the expression has no name; exaug does not guess one), its
    ``reference`` column 0, an index into the ``references`` attribute (the photo's path, sha256 and
    face box). The reference's hash is in the run key, so resuming with another photo is refused."""
    options = options or AugmentOptions()
    input_path, output = Path(input_path), Path(output)
    check_not_input(input_path, output)
    if options.preview:  # before the work, not after it
        check_sheet_path(options.preview, input_path, output)
    check_intensity(generator, options.intensity)
    reference = None if options.like is None else load_reference(options.like, generator, options.detection,
                                                                  options.max_pixels)
    targets = [] if reference is not None else [label_index(name) for name in options.expressions]
    every_source, batches_for = _open_input(input_path, generator, options)
    sources = shard_sources(every_source, options.num_shards, options.shard_index)
    size = options.size or generator.image_size
    run_key = {"command": "augment", "input": str(input_path.resolve()), "model_hash": model_hash,
               "expressions": [] if reference is not None else options.expressions, "intensity": options.intensity,
               "size": size, **asdict(options.detection), "shard": [options.shard_index, options.num_shards]}
    attrs = {"exaug_version": __version__, "model_hash": model_hash, "template": generator.template or "",
             "size": size, "expressions": list(EXPRESSIONS), "command": command}
    if reference is not None:
        run_key["like"], attrs["references"] = reference.sha256, [reference.record()]
    summary = write_face_table(output, sources, batches_for,
                               lambda batch: _augmented_rows(batch, generator, targets, options.intensity, size,
                                                             reference),
                               run_key=run_key, attrs=attrs, overwrite=overwrite, description="augmenting",
                               show_progress=show_progress,
                               elsewhere={source.relpath for source in every_source}.difference(
                                   source.relpath for source in sources))
    if options.preview:
        save_png(preview_sheet(output, options.preview_faces), options.preview)
    return summary


def working_size(generator: ExpressionGenerator, size: int | None) -> int:
    """The size faces are aligned and generated at: a resolution-free generator (the guided one)
    works at the output size when that is larger, so a 256-pixel face keeps 256 pixels of the
    photo's detail instead of being a 128-pixel render scaled up."""
    if generator.resolution_free and size:
        return max(size, generator.image_size)
    return generator.image_size


def _open_input(input_path: Path, generator: ExpressionGenerator, options: AugmentOptions) -> tuple[list[Source], BatchSource]:
    """The sources of INPUT, and how to turn a list of them into aligned batches."""
    if (input_path.is_file() and input_path.suffix.lower() in HDF5_SUFFIXES) or is_face_table(input_path):
        return _aligned_table_input(input_path, generator, options.batch_size)
    detector = options.detection.detector(generator.device, options.batch_size)
    aligner = FaceAligner(generator.template or "exaug", working_size(generator, options.size), device=generator.device)
    return discover_sources(input_path, options.max_pixels), photo_batches(detector, aligner, options.batch_size, options.workers,
                                                       max_pixels=options.max_pixels)


def _aligned_table_input(path: Path, generator: ExpressionGenerator, batch_size: int) -> tuple[list[Source], BatchSource]:
    """An ``exaug align`` or ``exaug augment`` output (either form): its original faces are used as they
    are, no detection; generated copies are never taken for originals."""
    table = read_faces(path)
    size, template = table.attrs.get("size"), table.attrs.get("template")
    if size != generator.image_size or (generator.template and template != generator.template):
        raise ExaugError(f"{path}: faces are aligned with template {template!r} at {size}px, but the model needs "
                         f"{generator.template!r} at {generator.image_size}px; re-run exaug align with "
                         f"--template {generator.template} --size {generator.image_size}, or give the photo folder")
    originals = np.flatnonzero(~table.synthetic)
    rows_of: dict[str, list[int]] = {}
    for row in originals:
        rows_of.setdefault(table.sources[table.source_index[row]], []).append(int(row))
    identity = table.identity
    sources = [Source(path, name, identity[rows[0]], label_name(table.expression[rows[0]]))
               for name, rows in rows_of.items()]

    def batches_for(todo: list[Source]) -> Iterator[AlignedBatch]:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rows = [(number, row) for number, source in enumerate(chunk) for row in rows_of[source.relpath]]
            positions = np.array([row for _, row in rows])  # ascending: one read of the HDF5 chunks
            images = torch.from_numpy(table.images[positions]).permute(0, 3, 1, 2)
            aligned = AlignedFaces(images.to(generator.device), torch.zeros(len(rows), 2, 3),
                                   np.array([n for n, _ in rows]), table.face[positions].astype(np.int64))
            yield AlignedBatch(chunk, aligned, [ImageFaces.empty() for _ in chunk])

    return sources, batches_for


def _augmented_rows(batch: AlignedBatch, generator: ExpressionGenerator, targets: list[int], intensity: float,
                    size: int, reference: Reference | None) -> FaceRows:
    """Per face: the original, then each target expression (or the reference's), adjacent, so a
    face's rows stay together; no copies of an unlabelled face the model leaves as it is."""
    aligned = batch.aligned
    n = len(aligned)
    if n == 0:
        return FaceRows.empty(size, size)
    meshes, moves = _meshes_and_moves(generator, aligned.images)
    if reference is None:
        names = [generator.expressions[i] for i in targets]
        generated = generator.generate_all(aligned.images, names, intensity=intensity, **meshes)
        labels = targets
    else:
        generated = generator.generate(aligned.images, like=reference.face, intensity=intensity, **meshes)[:, None]
        labels = [-1]  # the reference's expression has no name
    sources = [batch.sources[i] for i in aligned.image_index]
    known = [label_index(s.expression) for s in sources]
    # A face the model leaves as it is keeps its own label on its copies, and follows no reference;
    # one whose own expression is unknown too gets no copies: unlabelled duplicates say nothing of it.
    copies = [len(labels) if move or k >= 0 else 0 for k, move in zip(known, moves)]
    kept = torch.tensor([[True] + [count > 0] * len(labels) for count in copies]).flatten()
    rows = torch.cat([aligned.images[:, None], generated], 1).flatten(0, 1)
    faces = resize_faces(rows[kept.to(rows.device)], size)
    expression = [[k, *(labels if move else [k] * len(labels))][:1 + count]
                  for k, move, count in zip(known, moves, copies)]

    def each_row(per_face: list) -> list:
        """One value per face -> one per row written: the original, then its copies."""
        return [value for value, count in zip(per_face, copies) for _ in range(1 + count)]

    copy = np.array([number for count in copies for number in range(1 + count)])  # 0: the original
    return FaceRows(
        images=faces.permute(0, 2, 3, 1).cpu().numpy(),
        identity=each_row([s.identity for s in sources]),
        expression=np.array([label for row in expression for label in row], np.int8),
        source=each_row([s.relpath for s in sources]),
        face=np.repeat(aligned.face_index, [1 + count for count in copies]).astype(np.int16),
        synthetic=copy > 0,
        extra={} if reference is None else {  # -1: follows no reference (an original, a face left as it is)
            REFERENCE_COLUMN: np.where((copy > 0) & np.array(each_row(moves), bool), 0, -1).astype(np.int16)},
    )


def _meshes_and_moves(generator: ExpressionGenerator, faces: torch.Tensor) -> tuple[dict, list[bool]]:
    """For the guided model, the faces' meshes (handed on, so they are found once) and whether it
    changes each face at all: faces in profile or tilted steeply come back as they are, and their
    copies must not be labelled as the expressions they do not show. A StarGAN model changes every face."""
    if not generator.resolution_free:
        return {}, [True] * len(faces)
    meshes = generator.meshes(faces)
    own = meshes * (faces.shape[-1] / generator.image_size)  # generate() takes meshes in the faces' pixels
    return {"meshes": own}, generator.moves(meshes).tolist()


def preview_sheet(output: Path, max_faces: int):
    """Rows: the first faces of the output; columns: the original, then each generated expression."""
    with read_faces(output) as table:
        originals = np.flatnonzero(~table.synthetic)
        if len(originals) == 0:
            raise ExaugError(f"{output}: no faces to preview")
        widths = np.append(originals[1:], len(table)) - originals
        width = int(widths.max())  # faces without copies (unlabelled, left as they are) are not shown
        starts = originals[widths == width][:max_faces]
        grid = np.stack([table.images[int(start):int(start) + width] for start in starts])
        labels = ["original"] + [label_name(i) or "like" for i in table.expression[starts[0] + 1:starts[0] + width]]
    return labelled_grid(grid, labels)
