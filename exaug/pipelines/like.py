"""What augment and video may ask a generator for: the expression of a reference face (``--like``)
and the intensity range each model takes.

Only the geometry-guided model can take another person's expression: it reads the reference's mesh
and moves each face's points the same way. The reference photo goes through the same front end as
the inputs (detection with the run's options, the largest face, the model's template and size), so
what it contributes is its expression, never its crop or framing. Problems with it are one line
naming the file, raised before any output is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from exaug.errors import ExaugError
from exaug.faces.align import FaceAligner
from exaug.faces.detect import DetectionOptions
from exaug.io.digest import file_hash
from exaug.io.images import MAX_PIXELS, load_image
from exaug.model.generator import ExpressionGenerator


def check_intensity(generator: ExpressionGenerator, intensity: float) -> None:
    """0..1.5 for the guided model (1.0 = the mean CK+ peak for the face's shape), 0..1 for StarGAN."""
    limit = generator.max_intensity
    if not 0 <= intensity <= limit:
        kind = "the geometry-guided model" if generator.takes_like else "a StarGAN model"
        raise ExaugError(f"--intensity {intensity:g}: {kind} takes 0 to {limit:g}")


@dataclass(frozen=True)
class Reference:
    """The face whose expression every generated face takes, and what identifies it."""

    path: Path  # absolute, as outputs record it
    sha256: str  # of the file's bytes: part of the run key, so a resume cannot switch references
    face: torch.Tensor  # (1, 3, S, S) uint8 on the generator's device, aligned like the inputs
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of that face in the photo

    def record(self) -> dict[str, Any]:
        """What an output stores about the reference: enough to find the photo and check it is the same."""
        return {"path": str(self.path), "sha256": self.sha256, "box": [round(value, 1) for value in self.box]}


def load_reference(path: Path | str, generator: ExpressionGenerator, detection: DetectionOptions,
                   max_pixels: int = MAX_PIXELS) -> Reference:
    """The largest face of the photo ``path``, found with ``detection``'s options and aligned with the
    generator's template and size; an ExaugError naming ``path`` when it cannot serve."""
    path = Path(path)
    if not generator.takes_like:
        raise ExaugError(f"--like {path}: only the geometry-guided model (the bundled default) takes another "
                         "face's expression; this StarGAN model takes --emotion")
    image = load_image(path, max_pixels)  # ImageLoadError: "<path>: <reason>"
    found = replace(detection, faces="largest").detector(generator.device, 1).detect([image])[0]
    if len(found) == 0:
        raise ExaugError(f"{path}: no face found in the --like reference (detection threshold "
                         f"{detection.threshold:g}, smallest face {detection.min_face_size} px)")
    aligner = FaceAligner(generator.template or "exaug", generator.image_size, device=generator.device)
    box = tuple(float(value) for value in found.boxes[0])
    return Reference(path.resolve(), file_hash(path), aligner.align([image], [found]).images, box)
