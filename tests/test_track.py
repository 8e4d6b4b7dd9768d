"""exaug.faces.track: synthetic faces with known truth, then MTCNN on the real street clip."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from exaug.faces.track import FaceTracker, TrackedFace, box_iou, confirmed_faces

# A frontal face's landmarks inside its box, as fractions of the box (eyes, nose, mouth corners).
LAYOUT = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])


def face(x: float, y: float, size: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Box (4,) and landmarks (5,2) of a square face with its top-left corner at (x, y)."""
    return np.array([x, y, x + size, y + size]), np.array([x, y]) + LAYOUT * size


def detections(*faces: tuple[np.ndarray, np.ndarray], noise: float = 0.0,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's detector output for ``faces``, with Gaussian pixel noise like MTCNN's jitter."""
    rng = rng or np.random.default_rng(0)
    boxes = np.array([b for b, _ in faces]).reshape(-1, 4) + rng.normal(0, noise, (len(faces), 4))
    marks = np.array([m for _, m in faces]).reshape(-1, 5, 2) + rng.normal(0, noise, (len(faces), 5, 2))
    return boxes, np.full(len(faces), 0.99), marks


def ids(faces: list[TrackedFace]) -> list[int]:
    return [f.track_id for f in faces]


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_still_face_jitter_is_smoothed() -> None:
    rng = np.random.default_rng(1)
    tracker = FaceTracker()
    truth = face(200, 100)
    raw, smooth = [], []
    for _ in range(150):
        boxes, probs, marks = detections(truth, noise=2.0, rng=rng)
        (tracked,) = tracker.update(boxes, probs, marks)
        raw.append(marks[0])
        smooth.append(tracked.landmarks)
    raw_var = np.var(np.array(raw[25:]), axis=0).mean()
    smooth_var = np.var(np.array(smooth[25:]), axis=0).mean()
    assert smooth_var < 0.2 * raw_var
    assert np.abs(np.mean(smooth[25:], axis=0) - truth[1]).max() < 1.0  # no bias


@pytest.mark.parametrize(("speed", "max_lag"), [(1.0, 0.05), (3.0, 0.08)])
def test_moving_face_lags_little(speed: float, max_lag: float) -> None:
    """``speed`` in face widths per second at 25 fps; lag measured in face widths."""
    rng = np.random.default_rng(2)
    tracker = FaceTracker()
    step = speed * 100 / 25
    lags = []
    for i in range(50):
        truth = face(100 + step * i, 100)
        (tracked,) = tracker.update(*detections(truth, noise=2.0, rng=rng))
        if i >= 10:
            lags.append(np.linalg.norm(tracked.landmarks - truth[1], axis=1).mean() / 100)
    assert np.mean(lags) < max_lag


def test_missing_face_coasts_then_is_dropped() -> None:
    tracker = FaceTracker(max_missing=2)
    step = 5.0
    for i in range(10):
        (tracked,) = tracker.update(*detections(face(100 + step * i, 100)))
    first_id, last = tracked.track_id, tracked.landmarks
    for missing in (1, 2):  # still there, same id, carried along its motion
        (coasting,) = tracker.update(None, None, None)
        assert (coasting.track_id, coasting.missing, coasting.detection) == (first_id, missing, None)
        np.testing.assert_allclose(coasting.landmarks - last, [[step, 0]] * 5, atol=1.0)
        last = coasting.landmarks
    (back,) = tracker.update(*detections(face(100 + step * 12, 100)))
    assert (back.track_id, back.missing, back.detection) == (first_id, 0, 0)

    for _ in range(2):
        assert ids(tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))) == [first_id]
    assert tracker.update(None, None, None) == []  # third miss: gone
    (new,) = tracker.update(*detections(face(100 + step * 16, 100)))
    assert new.track_id != first_id


def test_one_frame_false_positive_is_not_kept_alive() -> None:
    tracker = FaceTracker()
    tracker.update(*detections(face(10, 10)))
    assert tracker.update(None, None, None) == []


def test_faces_near_each_other_keep_their_ids() -> None:
    rng = np.random.default_rng(3)
    tracker = FaceTracker()
    history = []
    for i in range(40):  # side by side, 10 px apart, walking together with jitter
        left, right = face(100 + 3 * i, 100), face(210 + 3 * i, 100)
        order = [left, right] if i % 2 else [right, left]  # detector order must not matter
        tracked = tracker.update(*detections(*order, noise=2.0, rng=rng))
        history.append({t.track_id: t.landmarks[:, 0].mean() for t in tracked})
    assert all(list(h) == [0, 1] for h in history)
    assert all(h[0] < h[1] for h in history) or all(h[0] > h[1] for h in history)


def test_crossing_faces_keep_their_ids() -> None:
    """A near face walking right passes in front of a far one walking left; their boxes overlap."""
    rng = np.random.default_rng(4)
    tracker = FaceTracker()
    for i in range(40):
        near, far = face(0 + 8 * i, 100, size=60), face(300 - 8 * i, 115, size=40)
        tracked = tracker.update(*detections(near, far, noise=1.0, rng=rng))
        assert ids(tracked) == [0, 1]
        assert abs(tracked[0].box[2] - tracked[0].box[0] - 60) < 5  # track 0 is still the near face
        assert abs(tracked[1].box[2] - tracked[1].box[0] - 40) < 5


def test_chunks_equal_one_run_and_take_times() -> None:
    rng = np.random.default_rng(5)

    class Frame:
        def __init__(self, boxes: np.ndarray, probs: np.ndarray, landmarks: np.ndarray):
            self.boxes, self.probs, self.landmarks = boxes, probs, landmarks

    frames = [Frame(*detections(face(50 + 4 * i, 80), face(300, 80 + 2 * i), noise=1.5, rng=rng)) for i in range(20)]
    frames[7] = Frame(*detections(face(50 + 4 * 7, 80)))  # the second face missed once
    times = np.cumsum(rng.uniform(0.02, 0.06, len(frames)))  # variable frame rate
    whole = FaceTracker().update_many(frames, times)
    chunked_tracker = FaceTracker()
    chunked = [r for start in range(0, 20, 6)
               for r in chunked_tracker.update_many(frames[start:start + 6], times[start:start + 6])]
    assert len(whole) == len(chunked) == 20
    for a, b in zip(whole, chunked):
        assert ids(a) == ids(b)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.landmarks, y.landmarks)
    assert [f.missing for f in whole[7]] == [0, 1]
    with pytest.raises(ValueError, match="times"):
        FaceTracker().update_many(frames, times[:3])


def test_rejects_inconsistent_detections() -> None:
    with pytest.raises(ValueError, match="landmarks"):
        FaceTracker().update(np.zeros((2, 4)), np.zeros(2), np.zeros((1, 5, 2)))


def test_real_clip_track_ids_are_stable(video_clip: Path) -> None:
    """MTCNN on 16 frames of the street clip (a 640x240 band of the 960x540 frame, where the
    people are, to keep CPU time to seconds): every confident face keeps one id throughout, even
    the one walking 0.4 face widths per frame, and smoothing stays on the detected faces."""
    from facenet_pytorch import MTCNN

    frames = []
    with av.open(str(video_clip)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=960, height=540, format="rgb24").to_ndarray()[250:490, 96:736])
            if len(frames) == 16:
                break
    boxes, probs, landmarks = MTCNN(keep_all=True, device="cpu").detect(np.stack(frames), landmarks=True)
    tracker = FaceTracker()
    results = [tracker.update(b, p, l) for b, p, l in zip(boxes, probs, landmarks)]

    confident = [t.track_id for t in results[0] if t.prob > 0.99]
    assert len(confident) >= 4
    for tracked in results:
        present = {t.track_id: t for t in tracked}
        assert set(confident) <= set(present), "a confident face lost its id"
    for earlier, later in zip(results, results[1:]):  # no id jumps to another face
        before = {t.track_id: t.box for t in earlier}
        for t in later:
            if t.track_id in before:
                width = t.box[2] - t.box[0]
                assert np.abs(t.box[:2] - before[t.track_id][:2]).max() < 0.6 * width
    for tracked, frame_landmarks in zip(results, landmarks):  # smoothed stays near detected
        for t in tracked:
            if t.detection is not None:
                width = t.box[2] - t.box[0]
                assert np.abs(t.landmarks - frame_landmarks[t.detection]).mean() < 0.15 * width
    assert len({t.track_id for r in results for t in r}) <= max(len(b) for b in boxes if b is not None) + 3


def _face(track_id: int, missing: int) -> TrackedFace:
    return TrackedFace(track_id, np.zeros((5, 2)), np.zeros(4), missing, 0.99, None if missing else 0)


def test_coasting_faces_are_kept_only_when_seen_again():
    # track 1 is missed in frames 1-2 and found again in frame 3: the gap is bridged;
    # track 2 disappears after frame 0 for good (a cut): its coasting frames are dropped.
    frames = [[_face(1, 0), _face(2, 0)], [_face(1, 1), _face(2, 1)], [_face(1, 2), _face(2, 2)], [_face(1, 0)]]
    kept = confirmed_faces(frames)
    assert [[face.track_id for face in frame] for frame in kept] == [[1, 2], [1], [1], [1]]
    # the decision can come from the look-ahead frames of the next chunk
    assert [[f.track_id for f in frame] for frame in confirmed_faces(frames[:2], later=[frames[2], frames[3]])] == [[1, 2], [1]]
