"""Face tracks across video frames, with landmarks smoothed so edited faces neither jitter nor flicker.

Per-frame detections are noisy in two ways that show badly once a generated face is pasted back:
landmarks jitter by a pixel or two (the aligned crop, hence the pasted face, shakes), and a face is
missed now and then (the edit switches off for a frame: flicker). The tracker links detections
into tracks by box overlap, smooths each track's landmarks and box with a One Euro filter, and
keeps a track alive, coasting on its last motion, for a few missed frames.

Choices, and why:

* One Euro filter rather than a fixed EMA: a fixed EMA trades jitter for lag once and for all,
  but a still face needs strong smoothing and a turning head needs almost none. The One Euro
  filter raises its cutoff with the speed it measures. Speed is measured in face sizes per second
  (not pixels), so the same parameters behave alike for a small background face and a close-up.
  One cutoff is shared by all points of a face so they move together and the crop does not warp.
* Greedy matching on descending IoU against each track's predicted box (last box moved by its
  filtered velocity): optimal assignment only matters when many boxes overlap, which faces rarely
  do, and prediction keeps fast or crossing faces on the right track. No scipy needed.
* New tracks are output from their first frame: a confirmation delay would leave a face
  unedited for its first frames, a visible pop-in. Spurious one-frame detections are handled
  the other way round: a track seen only once is not kept alive through misses, so a false
  positive lives one frame instead of ``1 + max_missing``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Detections(Protocol):
    """One frame's faces, as :class:`exaug.faces.detect.ImageFaces` holds them."""

    boxes: np.ndarray  # (n, 4) x0, y0, x1, y1
    probs: np.ndarray  # (n,)
    landmarks: np.ndarray  # (n, 5, 2)


@dataclass(frozen=True)
class TrackedFace:
    """A face in one frame: ``missing`` is 0 when detected in this frame, else how many frames it
    has been coasting; ``detection`` is the index of the matched detection (None when coasting)."""

    track_id: int
    landmarks: np.ndarray  # (5, 2) smoothed
    box: np.ndarray  # (4,) smoothed
    missing: int
    prob: float
    detection: int | None


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
            # the lagging filtered value would overestimate it and overshoot when coasting.
            dt = max(time - self.time, 1e-6)
            self.velocity = self.velocity + _alpha(dt, self.d_cutoff) * ((points - self.raw) / dt - self.velocity)
            speed = float(np.linalg.norm(self.velocity, axis=-1).mean()) / max(scale, 1e-6)
            self.value = self.value + _alpha(dt, self.min_cutoff + self.beta * speed) * (points - self.value)
        self.raw, self.time = points, time
        return self.value.copy()

    def predict(self, time: float) -> np.ndarray:
        """Where the points would be at ``time`` if they kept their filtered velocity."""
        assert self.value is not None and self.velocity is not None
        return self.value + self.velocity * (time - self.time)


@dataclass
class _Track:
    track_id: int
    filter: OneEuroFilter
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((5, 2)))
    box: np.ndarray = field(default_factory=lambda: np.zeros(4))
    predicted: np.ndarray = field(default_factory=lambda: np.zeros((7, 2)))  # landmarks + box corners
    prob: float = 0.0
    hits: int = 0
    missing: int = 0


class FaceTracker:
    """Links per-frame detections into tracks with stable ids and smoothed landmarks.

    Feed frames in order with :meth:`update` (one frame) or :meth:`update_many` (a chunk); the
    state carries over between calls, so chunked processing gives the same result as one long run.
    Times default to ``frame index / fps``; pass the frames' real times for variable frame rate.
    Defaults suit MTCNN on 25-30 fps video: a still face's landmark noise drops about tenfold
    while a face crossing its own width in a second lags by a few percent of its size.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missing: int = 2, *, min_cutoff: float = 0.5,
                 beta: float = 4.0, d_cutoff: float = 1.0, fps: float = 25.0):
        self.iou_threshold = iou_threshold
        self.max_missing = max_missing
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.fps = fps
        self.frame_index = 0
        self._tracks: list[_Track] = []
        self._next_id = 0

    def update(self, boxes: np.ndarray | None, probs: np.ndarray | None, landmarks: np.ndarray | None,
               time: float | None = None) -> list[TrackedFace]:
        """Track one frame's detections (None or empty arrays when no face); faces by track id."""
        time = self.frame_index / self.fps if time is None else float(time)
        self.frame_index += 1
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)
        probs = np.ones(len(boxes)) if probs is None else np.asarray(probs, np.float64).reshape(-1)
        landmarks = np.zeros((0, 5, 2)) if landmarks is None else np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
        if not len(boxes) == len(probs) == len(landmarks):
            raise ValueError(f"{len(boxes)} boxes, {len(probs)} probs and {len(landmarks)} landmarks")

        for track in self._tracks:
            track.predicted = track.filter.predict(time)
        matches = self._match(boxes)
        matched = {track_id: det for det, track_id in matches.items()}
        kept: list[_Track] = []
        results: list[TrackedFace] = []
        for track in self._tracks:
            det = matched.get(track.track_id)
            if det is not None:
                self._observe(track, boxes[det], probs[det], landmarks[det], time)
            elif track.hits > 1 and track.missing < self.max_missing:
                track.missing += 1
                self._coast(track)
            else:
                continue
            kept.append(track)
            results.append(self._state(track, det))
        for det in range(len(boxes)):
            if det not in matches:
                track = _Track(self._next_id, OneEuroFilter(self.min_cutoff, self.beta, self.d_cutoff))
                self._next_id += 1
                self._observe(track, boxes[det], probs[det], landmarks[det], time)
                kept.append(track)
                results.append(self._state(track, det))
        self._tracks = kept
        return sorted(results, key=lambda face: face.track_id)

    def update_many(self, frames: Iterable[Detections], times: Sequence[float] | None = None
                    ) -> list[list[TrackedFace]]:
        """:meth:`update` over a chunk of frames (e.g. ``FaceDetector.detect`` on a frame batch)."""
        frames = list(frames)
        if times is not None and len(times) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(times)} times")
        return [self.update(f.boxes, f.probs, f.landmarks, None if times is None else times[i])
                for i, f in enumerate(frames)]

    def _match(self, boxes: np.ndarray) -> dict[int, int]:
        """Detection index -> track id, greedily by descending IoU with the predicted boxes."""
        if not self._tracks or not len(boxes):
            return {}
        predicted = np.stack([track.predicted[5:].reshape(4) for track in self._tracks])
        iou = box_iou(predicted, boxes)
        matches: dict[int, int] = {}
        used_tracks: set[int] = set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            t, d = (int(i) for i in np.unravel_index(flat, iou.shape))
            if iou[t, d] < self.iou_threshold:
                break
            if t in used_tracks or d in matches:
                continue
            used_tracks.add(t)
            matches[d] = self._tracks[t].track_id
        return matches

    @staticmethod
    def _observe(track: _Track, box: np.ndarray, prob: float, landmarks: np.ndarray, time: float) -> None:
        # Box corners ride along with the landmarks so the box is as steady as the face.
        scale = math.sqrt(max(float(_area(box)), 1.0))
        points = track.filter(np.concatenate([landmarks, box.reshape(2, 2)]), time, scale)
        track.landmarks, track.box = points[:5], points[5:].reshape(4)
        track.prob, track.missing = float(prob), 0
        track.hits += 1

    def _coast(self, track: _Track) -> None:
        """Carry a missed face along its motion so the edit stays on it (no flicker)."""
        track.landmarks, track.box = track.predicted[:5], track.predicted[5:].reshape(4)

    @staticmethod
    def _state(track: _Track, det: int | None) -> TrackedFace:
        return TrackedFace(track.track_id, track.landmarks.copy(), track.box.copy(), track.missing,
                           track.prob, det)


def confirmed_faces(frames: list[list[TrackedFace]], later: Iterable[list[TrackedFace]] = ()) -> list[list[TrackedFace]]:
    """Drop coasting faces whose track is never detected again.

    Coasting bridges a detector miss of a frame or two, but at a cut to a shot without that face it
    would paste a stale face into frames that have none. A coasting face is kept only if its track is
    detected in a later frame of ``frames`` or of ``later`` (the next frames; a track dies after
    ``max_missing`` misses, so a look-ahead of ``max_missing + 1`` frames decides every case).
    """
    seen_later = {face.track_id for frame in later for face in frame if face.missing == 0}
    kept: list[list[TrackedFace]] = []
    for frame in reversed(frames):
        kept.append([face for face in frame if face.missing == 0 or face.track_id in seen_later])
        seen_later |= {face.track_id for face in frame if face.missing == 0}
    return kept[::-1]
