"""Picture sheets (training samples, augment previews): a grid of faces under column labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


HEADER_HEIGHT = 16


def labelled_grid(grid: np.ndarray, labels: Sequence[str]) -> Image.Image:
    """``grid`` (rows, columns, H, W, 3) uint8 as one image, each column titled by ``labels``."""
    rows, columns, height, width, _ = grid.shape
    body = grid.transpose(0, 2, 1, 3, 4).reshape(rows * height, columns * width, 3)
    sheet = Image.new("RGB", (columns * width, HEADER_HEIGHT + rows * height), "white")
    sheet.paste(Image.fromarray(np.ascontiguousarray(body)), (0, HEADER_HEIGHT))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for column, name in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
        draw.text((column * width + (width - right + left) / 2, (HEADER_HEIGHT - bottom - top) / 2), name,
                  fill="black", font=font)
    return sheet
