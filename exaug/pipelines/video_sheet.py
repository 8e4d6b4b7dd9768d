"""A before/after sheet of an edited video: the edit looked at in a second, without playing the clip.

Rows are moments spread evenly over the clip; each shows one edited face of that frame (a large
one the edit changed most) as it came in and as it went out, cut from the frames themselves (the
aligned square the face was edited in, a little wider), at :data:`SIDE` pixels. Frames are shown as
they are written; each row keeps the cut of the edited frame nearest its moment (so nothing but a
few cuts is held), and only those are resized, once, for the sheet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from exaug.faces.align import apply_affine, invert_affine
from exaug.io.sheets import labelled_grid
from exaug.pipelines.video_faces import EditedFaces

SIDE = 256  # pixels of each crop on the sheet
MARGIN = 1.25  # the crop: the face's aligned square, this much wider


@dataclass
class _Row:
    distance: float  # frames from the row's moment
    time: float
    before: np.ndarray  # (s, s, 3): the square around the face, at the frame's resolution
    after: np.ndarray | None = None
    index: int = 0  # the frame in its chunk, until ``after`` is cut
    box: np.ndarray | None = None


class BeforeAfter:
    """Collects ``rows`` before/after crops of the frames it is shown, for :meth:`sheet`. Each chunk
    is shown twice: :meth:`before` pasting (frames may be pasted into in place), :meth:`after`."""

    def __init__(self, rows: int, frames: int | None, fps: float):
        # Without a frame count (some streams lack one) the moments are a second apart.
        spacing = frames / rows if frames else fps
        self.moments = (np.arange(rows) + 0.5) * spacing
        self.rows: list[_Row | None] = [None] * rows
        self._pending: dict[int, _Row] = {}  # row -> the closer frame of this chunk, its after to cut

    def before(self, first: int, times: np.ndarray, frames: np.ndarray, edited: list[EditedFaces]) -> None:
        """Frames ``first, first + 1, ...`` of the clip, (n, H, W, 3) uint8, at ``times``, before their
        ``edited`` faces are pasted: the frames nearer a row's moment than its last are cut."""
        for index, box in _shown_faces(edited).items():
            frame = first + index
            row = int(np.abs(self.moments - frame).argmin())
            distance = abs(float(self.moments[row]) - frame)
            held = self._pending.get(row) or self.rows[row]
            if held is None or distance < held.distance:
                self._pending[row] = _Row(distance, float(times[index]), _cut(frames[index], box), index=index, box=box)

    def after(self, frames: np.ndarray) -> None:
        """The same chunk's frames with the faces pasted."""
        for row, picked in self._pending.items():
            picked.after = _cut(frames[picked.index], picked.box)
            self.rows[row] = picked
        self._pending = {}

    def sheet(self) -> Image.Image | None:
        """Rows of before | after, each under its time; None when no face was edited."""
        rows = [row for row in self.rows if row is not None]
        if not rows:
            return None
        grid = np.stack([np.stack([_resized(row.before), _resized(row.after)]) for row in rows])
        captions = [[f"{row.time:.2f} s", f"{row.time:.2f} s"] for row in rows]
        return labelled_grid(grid, ["before", "after"], captions)


def _shown_faces(edited: list[EditedFaces]) -> dict[int, np.ndarray]:
    """Frame in the chunk -> the box (x0, y0, x1, y1) of the face to show: of its edited faces at
    least a quarter the area of the largest (a sheet of blurred specks says little), the one the
    edit changed most (a face turned away barely moves: it fades out). The box is the footprint of
    the aligned square the face was edited in."""
    faces: dict[int, list[tuple[float, float, np.ndarray]]] = {}  # frame -> (area, change, box)
    for group in edited:
        side = group.faces.shape[-1]
        corners = torch.tensor([[[0.0, 0.0], [side, 0.0], [0.0, side], [side, side]]], dtype=torch.float64)
        inverse = invert_affine(group.transforms.cpu()).double()
        boxes = apply_affine(inverse, corners.expand(len(inverse), -1, -1))
        changes = group.change.tolist() if group.change is not None else [0.0] * len(inverse)
        for index, points, change in zip(group.frame_index.tolist(), boxes.numpy(), changes):
            box = np.concatenate([points.min(0), points.max(0)])
            faces.setdefault(index, []).append((float(np.prod(box[2:] - box[:2])), change, box))
    shown = {}
    for index, found in faces.items():
        largest = max(area for area, _, _ in found)
        shown[index] = max((face for face in found if face[0] >= largest / 4), key=lambda face: face[1])[2]
    return shown


def _cut(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The square around ``box`` (x0, y0, x1, y1), :data:`MARGIN` times its side, at the frame's
    resolution; the part outside the frame is black."""
    centre, half = (box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).max()) * MARGIN / 2
    x0, y0 = (centre - half).round().astype(int)
    size = max(1, int(round(2 * half)))
    canvas = np.zeros((size, size, 3), np.uint8)
    height, width = frame.shape[:2]
    left, top, right, bottom = max(x0, 0), max(y0, 0), min(x0 + size, width), min(y0 + size, height)
    if right > left and bottom > top:
        canvas[top - y0:bottom - y0, left - x0:right - x0] = frame[top:bottom, left:right]
    return canvas


def _resized(cut: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(cut).resize((SIDE, SIDE), Image.Resampling.LANCZOS))
