"""exaug.faces.follow on clips made from the real photos: faces that appear, leave and come back
across cuts are the faces per-frame detection finds, with MTCNN run on a few keyframes only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from exaug.faces.detect import FaceDetector
from exaug.faces.crops import crop_transforms
from exaug.faces.follow import FaceFollower, FollowOptions
from exaug.faces.mesh import FaceMesh
from videotools import Shot, all_frames, photo_clip

SHOTS = [6, 5, 6, 5, 5]  # frames per shot; hard cuts between them
EXPECTED = [1] * 6 + [0] * 5 + [1] * 6 + [1] * 5 + [6] * 5


@pytest.fixture(scope="module")
def cuts_clip(tmp_path_factory, people_dir: Path, multiface_jpg: Path) -> tuple[np.ndarray, np.ndarray]:
    """A portrait (the camera drifting), the face-free railing of the group photo, the portrait
    again, another person, then the six-person group: 27 frames of 320x240 with four cuts."""
    portrait = people_dir / "angelina_jolie" / "1.jpg"
    shots = [Shot(portrait, SHOTS[0], (0.1, 0.05, 0.85), (0.15, 0.1, 0.75)),
             Shot(multiface_jpg, SHOTS[1], (0.8, 0.0, 0.2), (0.78, 0.02, 0.2)),
             Shot(portrait, SHOTS[2], (0.15, 0.1, 0.75), (0.05, 0.05, 0.9)),
             Shot(people_dir / "shea_whigham" / "1.jpg", SHOTS[3], (0.2, 0.05, 0.6), (0.23, 0.08, 0.55)),
             Shot(multiface_jpg, SHOTS[4], (0.15, 0.0, 0.7), (0.13, 0.0, 0.69))]
    path = photo_clip(tmp_path_factory.mktemp("follow") / "cuts.mp4", shots)
    return all_frames(path)[0], np.arange(sum(SHOTS)) / 25


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def per_frame(cuts_clip):
    frames, _ = cuts_clip
    return FaceDetector("cpu").detect(list(frames))


def _slipping_at(time: float, mesh: FaceMesh, options: FollowOptions | None = None) -> FaceFollower:
    """A follower whose mesh loses every face on the frame at ``time``, as a slipping mesh would."""
    follower = FaceFollower(FaceDetector("cpu"), mesh, options)
    follow = follower._follow
    follower._follow = lambda frame, tracks, elapsed: ({} if math.isclose(follower._time + elapsed, time, abs_tol=1e-9)
                                                      else follow(frame, tracks, elapsed))
    return follower


def test_faces_that_appear_leave_and_come_back_are_what_per_frame_detection_finds(cuts_clip, per_frame, mesh):
    frames, times = cuts_clip
    follower = FaceFollower(FaceDetector("cpu"), mesh)
    followed = follower.update_many(frames, times)
    assert [len(faces) for faces in followed] == [len(found) for found in per_frame] == EXPECTED
    assert follower.detections == len(SHOTS), "MTCNN ran on the first frame of each shot only"
    starts = np.cumsum([0] + SHOTS[:-1])
    for start, length in zip(starts, SHOTS):
        ids = [[face.track_id for face in faces] for faces in followed[start:start + length]]
        assert all(frame == ids[0] for frame in ids), "a face keeps its id through its shot"
    first, again = followed[0][0].track_id, followed[starts[2]][0].track_id
    assert again != first, "nothing carries over a cut, not even the same face"
    for faces, found in zip(followed, per_frame):  # on the faces MTCNN finds, down to 30-pixel faces
        for face in faces:
            eyes = np.linalg.norm(found.landmarks[:, 1] - found.landmarks[:, 0], axis=-1)
            error = (np.linalg.norm(face.landmarks[None] - found.landmarks, axis=-1).mean(-1) / eyes).min()
            assert error < 0.3 and face.mesh.shape == (468, 3) and face.prob >= 0.5


@pytest.mark.parametrize("every", [4])
def test_detection_runs_every_n_frames_and_at_cuts(cuts_clip, mesh, every):
    frames, times = cuts_clip
    follower = FaceFollower(FaceDetector("cpu"), mesh, FollowOptions(detect_every=every))
    followed = follower.update_many(frames[:17], times[:17])  # three shots, chunked as the pipeline does
    assert [len(faces) for faces in followed] == EXPECTED[:17]
    assert follower.detections == sum(math.ceil(length / every) for length in SHOTS[:3])


def test_a_face_the_mesh_loses_is_looked_for_only_around_where_it_was(cuts_clip, per_frame, mesh):
    """A mesh that slips (forced here on frame 3 of the portrait shot) costs MTCNN on a crop, not on the
    frame: the face is found there and keeps its track. Where MTCNN misses it (the crop it sees made
    flat grey: a small face it finds in one frame and not the next), the face is left out of that
    frame and looked for around the same place on the next frames, still without a full-frame pass:
    found again it keeps its track; never found, it stays out until the next full pass."""
    frames, times = cuts_clip
    for grey_crops, expected, looks in ((0, [1] * 6, 1), (1, [1, 1, 1, 0, 1, 1], 2), (3, [1, 1, 1, 0, 0, 0], 3)):
        follower = _slipping_at(times[3], mesh)
        detect = follower.detector.detect
        calls = []

        def detect_in_grey(images):  # the first pass (frame 0) sees the frame; the next ones, grey crops
            calls.append(len(images))
            grey = 1 < len(calls) <= 1 + grey_crops
            return detect([torch.full_like(image, 128) for image in images] if grey else images)

        follower.detector.detect = detect_in_grey
        followed = follower.update_many(frames[:6], times[:6])
        assert [len(faces) for faces in followed] == expected
        assert follower.detections == 1 and follower.crop_detections == looks
        ids = {face.track_id for faces in followed for face in faces}
        assert len(ids) == 1, "the face keeps its track"
        if not grey_crops:
            found = per_frame[3].landmarks[0]
            eyes = np.linalg.norm(found[1] - found[0])
            assert np.linalg.norm(followed[3][0].landmarks - found, axis=-1).mean() / eyes < 0.3


def test_a_mesh_fit_far_from_where_the_face_was_going_is_a_wrong_fit_and_the_face_is_looked_for(cuts_clip, per_frame, mesh):
    """On the shared clip a woman walking past in profile, blurred, was fitted facing the other way
    (the mesh's nose on her ear, score 0.97), and the edit pasted there smudged her ear. Here the
    mesh's fit on frame 3 of the portrait shot is moved 40 of its 192 pixels to the side, score kept:
    it lands a third of a face from where the face's motion said, so the face counts as lost, MTCNN
    looks for it around where it was, and it is refitted where it is; taken as it came (``jump``
    off), frame 3's points are two thirds of an eye distance off (0.05 with it)."""
    frames, times = cuts_clip
    found = per_frame[3].landmarks[0]
    eyes = np.linalg.norm(found[1] - found[0])
    errors = {}
    for jump in (FollowOptions.jump, float("inf")):
        follower = FaceFollower(FaceDetector("cpu"), mesh, FollowOptions(jump=jump))
        follow, fit = follower._follow, follower.fitter.mesh
        wrong = {"now": False}

        def follow_wrongly_on_frame_3(frame, tracks, elapsed):
            wrong["now"] = math.isclose(follower._time + elapsed, times[3], abs_tol=1e-9)
            try:
                return follow(frame, tracks, elapsed)
            finally:
                wrong["now"] = False

        def moved(crops):
            result = fit(crops)
            return result._replace(landmarks=result.landmarks + torch.tensor([40.0, 0.0, 0.0])) if wrong["now"] else result

        follower._follow, follower.fitter.mesh = follow_wrongly_on_frame_3, moved
        followed = follower.update_many(frames[:6], times[:6])
        assert [len(faces) for faces in followed] == [1] * 6
        assert len({faces[0].track_id for faces in followed}) == 1, "the face keeps its track"
        errors[jump] = np.linalg.norm(followed[3][0].landmarks - found, axis=-1).mean() / eyes
        if jump == FollowOptions.jump:
            assert follower.detections == 1 and follower.crop_detections == 1
    assert errors[FollowOptions.jump] < 0.15 and errors[float("inf")] > 0.4, errors


def test_a_face_two_full_passes_miss_is_looked_for_around_where_it_was_until_the_next(cuts_clip, mesh):
    """MTCNN misses a half-turned face in two frames and finds it in the third (the street clip's
    people). Here the full passes on frames 2 and 3 of the portrait shot see a grey frame: the face
    is dropped on frame 3, as a full pass decides which faces there are, but on frame 4 MTCNN looks
    for it around where it was, finds it, and it keeps its track, instead of waiting for frame 5's
    full pass to start a new one."""
    frames, times = cuts_clip
    follower = FaceFollower(FaceDetector("cpu"), mesh, FollowOptions(detect_every=2))
    detect = follower.detector.detect
    full_passes = []

    def grey_full_passes(images):
        if len(images) == 1 and images[0].shape == frames.shape[1:]:
            full_passes.append(len(full_passes))
            if len(full_passes) in (2, 3):
                images = [torch.full_like(images[0], 128)]
        return detect(images)

    follower.detector.detect = grey_full_passes
    followed = follower.update_many(frames[:6], times[:6])
    assert [len(faces) for faces in followed] == [1, 1, 1, 0, 1, 1]
    assert follower.detections == 4 and follower.crop_detections == 1  # frames 0, 2, 3, 5; the look on 4
    assert len({faces[0].track_id for faces in followed if faces}) == 1, "the face keeps its track"


def test_a_face_a_later_full_pass_first_finds_is_followed_back_into_the_frames_before(cuts_clip, per_frame, mesh):
    """The first full pass (frame 0 of the portrait shot) sees a grey frame, so the face is first
    found by the next, on frame 4 (MTCNN misses it, or it walked in, in between). Its mesh is
    followed back into frames 0-3, where per-frame MTCNN finds it, under the same track; until then
    those frames are not settled (their lists may still grow), and a cut stops the way back."""
    frames, times = cuts_clip
    follower = FaceFollower(FaceDetector("cpu"), mesh, FollowOptions(detect_every=4))
    detect = follower.detector.detect
    full_passes = []

    def grey_first_pass(images):
        full_passes.append(len(images))
        return detect([torch.full_like(images[0], 128)] if len(full_passes) == 1 else images)

    follower.detector.detect = grey_first_pass
    followed = follower.update_many(frames[:4], times[:4])
    assert [len(faces) for faces in followed] == [0] * 4 and follower.settled == 0
    followed += follower.update_many(frames[4:SHOTS[0] + 2], times[4:SHOTS[0] + 2])  # across the cut
    assert [len(faces) for faces in followed] == [1] * SHOTS[0] + [0, 0]
    assert follower.detections == 3 and follower.settled == SHOTS[0], "a cut settles the frames before it"
    assert len({faces[0].track_id for faces in followed[:SHOTS[0]]}) == 1
    assert all(face.detection is None for faces in followed[:4] for face in faces)
    for faces, found in zip(followed[:4], per_frame):
        eyes = np.linalg.norm(found.landmarks[0, 1] - found.landmarks[0, 0])
        assert np.linalg.norm(faces[0].landmarks - found.landmarks[0], axis=-1).mean() / eyes < 0.3


def test_where_the_mesh_loses_a_face_followed_back_mtcnn_looks_around_it(cuts_clip, per_frame, mesh):
    """As above, the face is first found on frame 4; following it back, the mesh loses it on frame 2
    (forced, as the mesh loses a 20-pixel face). MTCNN then looks around where it was, on a crop:
    found there, it is refitted and followed back on to frame 0; where that look sees nothing (its
    crop made grey), the way back ends at frame 3."""
    frames, times = cuts_clip
    for grey_look, expected in ((False, [1, 1, 1, 1]), (True, [0, 0, 0, 1])):
        follower = FaceFollower(FaceDetector("cpu"), mesh, FollowOptions(detect_every=4))
        detect, follow = follower.detector.detect, follower._follow
        passes = []

        def grey_first_and_looks(images):
            passes.append(len(images))
            grey = len(passes) == 1 or (grey_look and len(passes) > 2)  # frame 0's pass; the look
            return detect([torch.full_like(image, 128) for image in images] if grey else images)

        follower.detector.detect = grey_first_and_looks
        follower._follow = lambda frame, tracks, elapsed: ({} if torch.equal(frame, torch.from_numpy(frames[2]))
                                                          else follow(frame, tracks, elapsed))
        followed = follower.update_many(frames[:5], times[:5])
        assert [len(faces) for faces in followed[:4]] == expected and len(followed[4]) == 1
        assert follower.detections == 2 and follower.crop_detections == 1, "one look, on a crop of frame 2"
        assert len({face.track_id for faces in followed for face in faces}) == 1
        if not grey_look:
            found = per_frame[2].landmarks[0]
            eyes = np.linalg.norm(found[1] - found[0])
            assert np.linalg.norm(followed[2][0].landmarks - found, axis=-1).mean() / eyes < 0.3


def test_frames_are_held_for_following_back_no_longer_than_follow_back(cuts_clip, mesh):
    """A rare full pass (every 1000 frames) does not hold a thousand frames: frames wait to be
    settled ``follow_back`` frames at the most (a 4K frame is 25 MB), and ``detect_every`` when
    that is fewer."""
    frames, times = cuts_clip
    for options, held in ((FollowOptions(detect_every=1000, follow_back=3), 3), (FollowOptions(detect_every=2), 2)):
        follower = FaceFollower(FaceDetector("cpu"), mesh, options)
        follower.update_many(frames[:SHOTS[0]], times[:SHOTS[0]])
        assert follower.settled == SHOTS[0] - held and len(follower._pending) == held


def test_a_lost_face_whose_last_place_is_off_the_frame_is_dropped_without_looking(cuts_clip, mesh):
    """A face that walked out: its square around the last mesh lies beyond the frame's edge (moved
    there by hand), so there is no crop to look in; it is dropped, MTCNN does not run on an empty
    crop (that raised a RuntimeError), and no full-frame pass is spent on it either."""
    frames, times = cuts_clip
    for shift in (2.0, -2.0):
        follower = _slipping_at(times[3], mesh)
        followed = follower.update_many(frames[:3], times[:3])
        follower._tracks[0].raw[:, 0] += shift * frames.shape[2]
        followed += follower.update_many(frames[3:6], times[3:6])
        assert [len(faces) for faces in followed] == [1, 1, 1, 0, 0, 0]
        assert follower.detections == 1 and follower.crop_detections == 0


def test_a_lost_face_whose_square_shows_a_face_elsewhere_starts_a_track_and_is_not_looked_for_again(cuts_clip, mesh):
    """The portrait's track moved by hand half a face to the side before its mesh slips: MTCNN finds
    the face in the square around the old place, too far from it to be the same track, so the face
    starts a track of its own and the old place is not searched on the frames after (no more crop
    looks: the new track's mesh follows the face)."""
    frames, times = cuts_clip
    follower = _slipping_at(times[3], mesh)
    followed = follower.update_many(frames[:3], times[:3])
    box = followed[2][0].box
    follower._tracks[0].raw[:, 0] += 0.6 * (box[2] - box[0])
    followed += follower.update_many(frames[3:6], times[3:6])
    assert [len(faces) for faces in followed] == [1] * 6
    assert len({faces[0].track_id for faces in followed[:3]} | {faces[0].track_id for faces in followed[3:]}) == 2
    assert follower.detections == 1 and follower.crop_detections == 1


def test_smoothed_landmarks_are_steadier_than_detections(cuts_clip, per_frame, mesh):
    """On the drifting portrait the camera moves smoothly: frame-to-frame acceleration of the
    alignment points is noise. The smoothed mesh's points have less of it than MTCNN's."""
    frames, times = cuts_clip
    follower = FaceFollower(FaceDetector("cpu"), mesh)
    followed = follower.update_many(frames[:6], times[:6])
    smoothed = np.stack([faces[0].landmarks for faces in followed])
    detected = np.stack([found.landmarks[0] for found in per_frame[:6]])

    def jerk(points: np.ndarray) -> float:
        return float(np.abs(np.diff(points, n=2, axis=0)).mean())

    assert jerk(smoothed) < jerk(detected)


def test_crop_levels_the_eyes_and_frames_the_face():
    """A mesh rolled by 30 degrees gives a crop that turns it back and fits it with margin."""
    rng = np.random.default_rng(0)
    flat = np.zeros((468, 3))
    flat[:, :2] = rng.uniform(-50, 50, (468, 2))
    flat[33, :2], flat[263, :2] = (-30, -10), (30, -10)
    angle = math.radians(30)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rolled = flat.copy()
    rolled[:, :2] = flat[:, :2] @ rotation.T + (400, 300)
    transform = crop_transforms(torch.from_numpy(rolled[None]), 1.5)[0].double()
    eyes = rolled[[33, 263], :2] @ transform[:, :2].T.numpy() + transform[:, 2].numpy()
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-3, "eyes level in the crop"
    inside = rolled[:, :2] @ transform[:, :2].T.numpy() + transform[:, 2].numpy()
    assert inside.min() > 0 and inside.max() < 192
