"""exaug.faces.track: box overlap, matching and the One Euro filter, on faces with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from exaug.faces.track import OneEuroFilter, box_iou, match_boxes

# A frontal face's landmarks inside its box, as fractions of the box (eyes, nose, mouth corners).
LAYOUT = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])


def face(x: float, y: float, size: float = 100.0) -> np.ndarray:
    """Landmarks (5, 2) of a square face with its top-left corner at (x, y)."""
    return np.array([x, y]) + LAYOUT * size


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_matching_takes_the_best_overlaps_first() -> None:
    tracks = np.array([[0, 0, 10, 10], [8, 0, 18, 10]])
    detections = np.array([[9, 0, 19, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    assert match_boxes(box_iou(tracks, detections), 0.3) == {0: 1, 1: 0}
    assert match_boxes(box_iou(tracks, np.zeros((0, 4))), 0.3) == {}


@pytest.mark.parametrize("settings", [(0.5, 4.0), (1.0, 10.0)])
def test_still_face_jitter_is_smoothed(settings) -> None:
    rng = np.random.default_rng(1)
    smoothing = OneEuroFilter(*settings, d_cutoff=1.0)
    truth = face(200, 100)
    raw, smooth = [], []
    for step in range(150):
        observed = truth + rng.normal(0, 2.0, truth.shape)
        raw.append(observed)
        smooth.append(smoothing(observed, step / 25, scale=100))
    raw_var = np.var(np.array(raw[25:]), axis=0).mean()
    smooth_var = np.var(np.array(smooth[25:]), axis=0).mean()
    assert smooth_var < 0.35 * raw_var
    assert np.abs(np.mean(smooth[25:], axis=0) - truth).max() < 1.0  # no bias


@pytest.mark.parametrize(("speed", "max_lag"), [(1.0, 0.05), (3.0, 0.08)])
def test_moving_face_lags_little(speed: float, max_lag: float) -> None:
    """``speed`` in face widths per second at 25 fps; lag measured in face widths."""
    rng = np.random.default_rng(2)
    smoothing = OneEuroFilter(1.0, 10.0, 1.0)
    step = speed * 100 / 25
    lags = []
    for i in range(50):
        truth = face(100 + step * i, 100)
        smoothed = smoothing(truth + rng.normal(0, 2.0, truth.shape), i / 25, scale=100)
        if i >= 10:
            lags.append(np.linalg.norm(smoothed - truth, axis=1).mean() / 100)
    assert np.mean(lags) < max_lag
