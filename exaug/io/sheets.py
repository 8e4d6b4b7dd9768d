"""Picture sheets (training samples, augment, align and eval previews): a grid of faces under column
labels, each face optionally above a caption (what the judge saw in it), or faces in rows each
above its caption."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HEADER_HEIGHT = 16
RIGHT, WRONG = (0, 120, 0), (190, 0, 0)  # caption colours: as asked, and not


def labelled_grid(grid: np.ndarray, labels: Sequence[str], captions: Sequence[Sequence[str]] | None = None,
                  marks: np.ndarray | None = None) -> Image.Image:
    """``grid`` (rows, columns, H, W, 3) uint8 as one image, each column titled by ``labels``; with
    ``captions`` (rows x columns), each face above its own, green where ``marks`` (rows, columns)
    is 1, red where 0, black where -1 or without marks."""
    rows, columns, height, width, _ = grid.shape
    cell = height + (HEADER_HEIGHT if captions is not None else 0)
    sheet = Image.new("RGB", (columns * width, HEADER_HEIGHT + rows * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(labels):
        _caption(draw, name, column * width, 0, width)
    for row in range(rows):
        for column in range(columns):
            top = HEADER_HEIGHT + row * cell
            sheet.paste(Image.fromarray(np.ascontiguousarray(grid[row, column])), (column * width, top))
            if captions is not None:
                mark = -1 if marks is None else marks[row, column]
                colour = RIGHT if mark == 1 else WRONG if mark == 0 else "black"
                _caption(draw, captions[row][column], column * width, top + height, width, colour)
    return sheet


def captioned_grid(faces: np.ndarray, captions: Sequence[str], columns: int) -> Image.Image:
    """``faces`` (n, H, W, 3) uint8 in rows of ``columns``, each above its caption."""
    count, height, width, _ = faces.shape
    columns = max(1, min(columns, count))
    sheet = Image.new("RGB", (columns * width, -(-count // columns) * (height + HEADER_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for number, (face, caption) in enumerate(zip(faces, captions)):
        left, top = number % columns * width, number // columns * (height + HEADER_HEIGHT)
        sheet.paste(Image.fromarray(np.ascontiguousarray(face)), (left, top))
        _caption(draw, caption, left, top + height, width)
    return sheet


def _caption(draw: ImageDraw.ImageDraw, text: str, left: int, top: int, width: int,
             colour: str | tuple[int, int, int] = "black") -> None:
    """``text`` centred in the band ``width`` wide and HEADER_HEIGHT high at (left, top), cut to fit
    with an ellipsis rather than run into the next face's."""
    font = ImageFont.load_default(size=11)
    if draw.textlength(text, font=font) > width - 4:  # ASCII dots: the default font has no ellipsis
        while len(text) > 1 and draw.textlength(text + "...", font=font) > width - 4:
            text = text[:-1]
        text += "..."
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    draw.text((left + (width - x1 + x0) / 2, top + (HEADER_HEIGHT - y1 - y0) / 2), text, fill=colour, font=font)
