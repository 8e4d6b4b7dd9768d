"""What following faces through a video needs: overlap, matching, smoothing, and a tracked face.

Per-frame face geometry is noisy (a pixel or two of jitter) and that shows badly once a generated
face is pasted back: the aligned crop, hence the pasted face, shakes. :mod:`exaug.faces.follow`
links a face's observations into a track and smooths them with the One Euro filter here.

Choices, and why:

* One Euro filter rather than a fixed EMA: a fixed EMA trades jitter for lag once and for all,
  but a still face needs strong smoothing and a turning head needs almost none. The One Euro
  filter raises its cutoff with the speed it measures. Speed is measured in face sizes per second
  (not pixels), so the same parameters behave alike for a small background face and a close-up.
  One cutoff is shared by all points of a face so they move together and the crop does not warp.
* Greedy matching on descending IoU: optimal assignment only matters when many boxes overlap,
  which faces rarely do. No scipy needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrackedFace:
    """A face in one frame: ``prob`` is its mesh's face score, ``detection`` the index of the
    detection that confirmed it in this frame (None between detections)."""

    track_id: int
    landmarks: np.ndarray  # (5, 2) alignment points of the smoothed mesh
    box: np.ndarray  # (4,) the smoothed mesh's bounding box
    prob: float
    detection: int | None
    mesh: np.ndarray  # (468, 3): x, y smoothed, z as last seen


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x0,y0,x1,y1 boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_boxes(iou: np.ndarray, threshold: float) -> dict[int, int]:
    """Column -> row of a (tracks, detections) IoU matrix, greedily by descending IoU, pairs under
    ``threshold`` left out."""
    matches: dict[int, int] = {}
    used_rows: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        row, column = (int(i) for i in np.unravel_index(flat, iou.shape))
        if iou[row, column] < threshold:
            break
        if row in used_rows or column in matches:
            continue
        used_rows.add(row)
        matches[column] = row
    return matches


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def _alpha(dt: float, cutoff: float) -> float:
    """Smoothing factor of a first-order low-pass with ``cutoff`` Hz sampled every ``dt`` s."""
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass
class OneEuroFilter:
    """One Euro filter (Casiez et al., CHI 2012) over an array of 2-D points sharing one cutoff.

    ``min_cutoff`` (Hz) sets the smoothing of a still face, ``beta`` how fast the cutoff rises with
    speed (in ``scale`` units per second), ``d_cutoff`` (Hz) the smoothing of the speed estimate.
    """

    min_cutoff: float
    beta: float
    d_cutoff: float
    value: np.ndarray | None = None
    velocity: np.ndarray | None = None
    raw: np.ndarray | None = None
    time: float = 0.0

    def __call__(self, points: np.ndarray, time: float, scale: float) -> np.ndarray:
        points = np.asarray(points, np.float64)
        if self.value is None or self.velocity is None or self.raw is None:
            self.value, self.velocity = points.copy(), np.zeros_like(points)
        else:
            # Speed from consecutive measurements, as in the authors' code: measuring it against
            # the lagging filtered value would overestimate it (and it predicts the next crop).
            dt = max(time - self.time, 1e-6)
            self.velocity = self.velocity + _alpha(dt, self.d_cutoff) * ((points - self.raw) / dt - self.velocity)
            speed = float(np.linalg.norm(self.velocity, axis=-1).mean()) / max(scale, 1e-6)
            self.value = self.value + _alpha(dt, self.min_cutoff + self.beta * speed) * (points - self.value)
        self.raw, self.time = points, time
        return self.value.copy()
