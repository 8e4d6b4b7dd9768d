"""Pasting back: an unchanged face leaves the photo as it was; an edited one changes only the face."""

from __future__ import annotations

import numpy as np
import torch

from exaug.faces import FaceAligner, FaceDetector
from exaug.faces.blend import feather_mask, paste_faces
from exaug.io.images import load_image


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean().item()
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_paste_back(multiface_jpg):
    image = load_image(multiface_jpg)
    found = FaceDetector("cpu").detect([image])
    aligned = FaceAligner("exaug", device="cpu").align([image], found)
    frame = torch.from_numpy(image)
    mask = feather_mask(aligned.images.shape[-1])

    unchanged = paste_faces(frame.clone(), aligned.images.float(), aligned.transforms, mask)
    assert unchanged.dtype == torch.uint8 and _psnr(unchanged.float(), frame.float()) > 35.0

    edited = paste_faces(frame.clone(), 255.0 - aligned.images.float(), aligned.transforms, mask)
    changed = (edited.float() - frame.float()).abs().amax(-1) > 8
    inside = torch.zeros_like(changed)
    for x0, y0, x1, y1 in found[0].boxes.round().astype(int):
        inside[max(0, y0 - 40):y1 + 40, max(0, x0 - 40):x1 + 40] = True
        centre = ((y0 + y1) // 2, (x0 + x1) // 2)
        assert changed[centre], "the centre of every face is edited"
    assert not (changed & ~inside).any(), "nothing changes away from the faces"
    # No seam: white faces on a black frame show the warped mask itself; a hard paste would step
    # 0 -> 255 between two pixels, the feathered one rises over many pixels.
    flat = paste_faces(torch.zeros_like(frame), torch.full_like(aligned.images, 255, dtype=torch.float32),
                       aligned.transforms, mask)
    flat = flat.float()
    steps = torch.maximum((flat[:, 1:] - flat[:, :-1]).abs().amax(), (flat[1:] - flat[:-1]).abs().amax())
    assert flat.max() > 250 and steps < 255 * 1.5 / 8, f"largest step {steps:.0f} of 255: a ramp under 8 pixels"
