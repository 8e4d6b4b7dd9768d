"""``exaug align``: every face of every input image, aligned, with where it came from.

The output is a face table (see :mod:`exaug.io.store`): one row per face with the aligned image,
source, identity, expression label (from an expression folder), detection probability, landmarks
and transform. It is committed batch by batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from exaug import __version__
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS, label_index, label_name
from exaug.faces.align import FaceAligner, check_face_size
from exaug.faces.detect import DetectionOptions
from exaug.faces.mesh import MeshFitter
from exaug.io.images import MAX_PIXELS, save_png
from exaug.io.outputs import check_not_input, check_sheet_path
from exaug.io.sheets import captioned_grid
from exaug.io.sources import discover_sources
from exaug.io.store import FaceRows, read_faces
from exaug.pipelines.stages import AlignedBatch, RunSummary, photo_batches, write_face_table


@dataclass
class AlignOptions:
    template: str = "exaug"
    size: int | None = None  # None: the template's own (128 exaug, 112 arcface)
    device: str = "auto"
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    batch_size: int = 16
    workers: int = 4
    mesh: bool = False  # also store each face's 468-point mesh (column "mesh", source pixels)
    max_pixels: int = MAX_PIXELS  # larger images fail (decompression bombs)
    preview: Path | None = None  # also draw the first faces on this PNG sheet
    preview_faces: int = 32  # faces on the sheet, 8 a row

    def __post_init__(self) -> None:
        check_face_size(self.size)


def align_dataset(input_path: Path | str, output: Path | str, options: AlignOptions | None = None, *,
                  overwrite: bool = False, command: str = "", show_progress: bool = True) -> RunSummary:
    """Align every face under ``input_path`` into ``output`` (``.h5``/``.hdf5`` file or folder), and
    draw ``options.preview``'s sheet of the first faces (:func:`alignment_sheet`)."""
    options = options or AlignOptions()
    input_path, output = Path(input_path), Path(output)
    check_not_input(input_path, output)
    if options.preview:  # before the work, not after it
        check_sheet_path(options.preview, input_path, output)
    sources = discover_sources(input_path, options.max_pixels)
    detector = options.detection.detector(options.device, options.batch_size)
    aligner = FaceAligner(options.template, options.size, device=detector.device)
    mesher = MeshFitter(device=detector.device) if options.mesh else None
    run_key = {"command": "align", "input": str(input_path.resolve()), "template": options.template,
               "size": aligner.size, **asdict(options.detection), **({"mesh": True} if options.mesh else {})}
    attrs = {"exaug_version": __version__, "template": options.template, "size": aligner.size,
             "expressions": list(EXPRESSIONS), "command": command}
    summary = write_face_table(output, sources,
                               photo_batches(detector, aligner, options.batch_size, options.workers, mesher,
                                             options.max_pixels),
                               face_rows, run_key=run_key, attrs=attrs, overwrite=overwrite, description="aligning",
                               show_progress=show_progress)
    if options.preview:
        save_png(alignment_sheet(output, options.preview_faces), options.preview)
    return summary


def alignment_sheet(output: Path, max_faces: int, columns: int = 8) -> Image.Image:
    """The first ``max_faces`` faces of an output as they were cut, 8 a row, each under what the table
    says of it (its identity, else its expression label, else its file's name): a look at whether
    the crops sit right and the folders name the right people."""
    with read_faces(output) as table:
        if not len(table):
            raise ExaugError(f"{output}: no faces to preview")
        count = min(len(table), max_faces)
        captions = [identity or label_name(int(expression)) or PurePosixPath(source).stem
                    for identity, expression, source in zip(table.identity[:count], table.expression[:count],
                                                            table.source[:count])]
        return captioned_grid(table.images[:count], captions, columns)


def face_rows(batch: AlignedBatch) -> FaceRows:
    """The rows of one aligned batch: originals, with the detector's evidence as extra columns."""
    aligned = batch.aligned
    meshes = {} if batch.meshes is None else {"mesh": batch.meshes.numpy().astype(np.float32)}
    sources = [batch.sources[i] for i in aligned.image_index]
    detections = [batch.detections[i] for i in aligned.image_index]
    return FaceRows(
        images=aligned.images.permute(0, 2, 3, 1).cpu().numpy(),
        identity=[source.identity for source in sources],
        expression=np.array([label_index(s.expression) for s in sources], np.int8),
        source=[source.relpath for source in sources],
        face=aligned.face_index.astype(np.int16),
        synthetic=np.zeros(len(aligned), bool),
        extra={
            "prob": np.array([d.probs[f] for d, f in zip(detections, aligned.face_index)], np.float32),
            "landmarks": np.array([d.landmarks[f] for d, f in zip(detections, aligned.face_index)],
                                  np.float32).reshape(-1, 5, 2),
            "transform": aligned.transforms.cpu().numpy().astype(np.float32),
            **meshes,
        },
    )
