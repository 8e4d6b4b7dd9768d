"""Between uint8 RGB faces and what a model sees: RGB, or luma with the chroma set aside.

A luma model (trained on greyscale data, most public expression data being greyscale) edits only
BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B. The input's chroma is kept as each channel's offset
from Y (R - Y, G - Y, B - Y, linear in Cb and Cr alone), so putting it back onto the new Y keeps
Cb/Cr exactly (up to rounding and clipping), and a grey face, whose three offsets are equal, stays
exactly grey.
"""

from __future__ import annotations

import torch
from torch import Tensor

from exaug.io.images import LUMA


def encode(faces: Tensor, channels: int) -> tuple[Tensor, Tensor | None]:
    """uint8 RGB (N,3,H,W) -> model input in [-1, 1] with ``channels`` channels, and the chroma a
    luma model must put back ((N,3,H,W) offsets from Y in [0, 255] units), or None for RGB."""
    rgb = faces.float()
    if channels == 3:
        return rgb / 127.5 - 1, None
    luma = sum(weight * rgb[:, i:i + 1] for i, weight in enumerate(LUMA))
    return luma / 127.5 - 1, rgb - luma


def decode(x: Tensor, chroma: Tensor | None) -> Tensor:
    """Model output in [-1, 1] (+ the chroma :func:`encode` set aside) -> uint8 RGB (N,3,H,W)."""
    scaled = (x.float() + 1) * 127.5
    rgb = scaled if chroma is None else scaled + chroma
    return rgb.round_().clamp_(0, 255).to(torch.uint8)
