"""Picture sheets (training samples, augment and align previews): a grid of faces under column
labels, or faces each with its caption."""

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


def captioned_grid(faces: np.ndarray, captions: Sequence[str], columns: int) -> Image.Image:
    """``faces`` (n, H, W, 3) uint8 in rows of ``columns``, each above its caption, cut to the face's
    width with an ellipsis."""
    count, height, width, _ = faces.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    sheet = Image.new("RGB", (columns * width, rows * (height + HEADER_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for number, (face, caption) in enumerate(zip(faces, captions)):
        left, top = number % columns * width, number // columns * (height + HEADER_HEIGHT)
        sheet.paste(Image.fromarray(np.ascontiguousarray(face)), (left, top))
        while len(caption) > 1 and draw.textlength(caption, font=font) > width - 4:
            caption = caption[:-2] + "…"
        text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), caption, font=font)
        draw.text((left + (width - text_right + text_left) / 2,
                   top + height + (HEADER_HEIGHT - text_bottom - text_top) / 2), caption, fill="black", font=font)
    return sheet
