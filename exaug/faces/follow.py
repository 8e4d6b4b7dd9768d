"""Follow faces through a video by their geometry: MTCNN on keyframes, the face mesh in between.

MTCNN on every frame was most of ``exaug video``'s time (31 of 43 s on a 720x480 clip) and its five
points jitter by a pixel or two. A face seen in one frame is almost where it was in the next, so
between keyframes each face is followed by running the 468-point face mesh on a crop around where
its mesh was: a batch of small 192-pixel crops costs a fraction of a detection pass, and the mesh's
face score says when the crop no longer holds the face.

MTCNN still decides which faces there are, so the faces edited are the ones per-frame detection
finds. It runs on the first frame, every ``detect_every`` frames (to pick up faces that walked in),
at a scene cut (a cheap test: the mean change of a grey thumbnail; tracks do not survive a cut),
and on the frame after a detection that missed a face the mesh still holds: a face missed by
``max_misses`` detections in a row is dropped, so a single miss does not switch the edit off for
``detect_every`` frames. When a mesh loses its face (score below ``min_score``), MTCNN looks again
only around where it was: on the shared 720x480 clip one face, half hidden, slipped from its
mesh every few frames, and a full-frame pass for each slip was most of the detection time. A face
not found there (no face at all in its square), or one a full pass drops, is looked for there again
on every frame until the next full pass: MTCNN itself misses small and half-turned faces in a frame
or two and finds them in the next, and each look costs a crop (on that clip, looking for the
faces full passes drop finds 405 of the 413 faces per-frame MTCNN finds instead of 390).

A face that walks in between full passes is first found by the next one, up to ``detect_every``
frames late, and one MTCNN misses in a pass or two (small, half hidden) later still; from where a
track starts its mesh is followed back, frame by frame, into the ``detect_every`` frames before (10
at the most, never across a cut), with MTCNN looking around it where the mesh loses it, until
neither finds it or it stands on a face already there. So a frame's faces are settled only that
many frames later: :attr:`FaceFollower.settled` says how many frames are, and the lists of faces
:meth:`FaceFollower.update_many` returned for the others may still grow.

A fit whose five points land far from where the face's motion said (more than ``jump`` face
sizes) is taken for a wrong one, whatever its score: a blurred profile walking past was fitted
facing the other way, the mesh's nose on the ear, and looked like a frontal face to edit. Such a
face counts as lost and is looked for around where it was, as above.

Each face's mesh is smoothed over time with a One Euro filter (:mod:`exaug.faces.track`), and its
five alignment points come from the smoothed mesh, so the aligned crop, hence the pasted face,
neither jitters nor lags. A face the mesh cannot fit (a profile, a tiny face) is carried by its
detections instead: the last mesh is moved by the similarity that takes its five points onto
MTCNN's, so one filter state serves both sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from exaug.faces.align import warp_regions
from exaug.faces.crops import crop_transforms, faces_in_frame, mesh_box, moved_onto, search_square
from exaug.faces.detect import FaceDetector, ImageFaces
from exaug.faces.mesh import INPUT_SIZE, FaceMesh, MeshFitter, five_points, to_source
from exaug.faces.track import OneEuroFilter, TrackedFace, box_iou, match_boxes
from exaug.io.images import LUMA

Timer = Callable[[str], AbstractContextManager]


@dataclass(frozen=True)
class FollowOptions:
    detect_every: int = 10  # frames between detection passes at the most (1: every frame)
    min_score: float = 0.5  # mesh face score under which a track is lost
    cut_threshold: float = 30.0  # grey levels of mean thumbnail change that make a scene cut
    crop_scale: float = 1.5  # the mesh's crop: the mesh's bounding box enlarged this much, eyes level
    max_misses: int = 2  # detection passes in a row that may miss a face the mesh still holds
    iou_threshold: float = 0.3  # box overlap for a detection to be a tracked face
    drift: float = 0.5  # mean distance of a tracked face's five points from its detection's, in
    # eye distances, beyond which the mesh is refitted from the detection (bounds tracking drift)
    jump: float = 0.16  # mean distance of a mesh's five points from where its motion said they would be,
    # in face sizes, beyond which the fit is wrong and the face lost (on the shared clips: at most 0.13
    # for right fits, 0.17-0.33 for a blurred profile fitted facing the wrong way)
    follow_back: int = 10  # frames a new face is followed back into at the most (also at most
    # detect_every): the frames are held until then, and 4K frames are 25 MB each


@dataclass
class _Track:
    track_id: int
    filter: OneEuroFilter
    raw: np.ndarray  # (468, 3) the latest observed mesh: where to crop next
    smoothed: np.ndarray  # (468, 2)
    score: float = 0.0
    misses: int = 0


class FaceFollower:
    """Faces of consecutive video frames, with stable ids and smoothed meshes.

    Feed frames in order (:meth:`update_many` per chunk; state carries over between calls).
    The filter settings are :class:`~exaug.faces.track.OneEuroFilter`'s; a mesh jitters less than
    MTCNN's points, so they smooth less (and lag less) than the detector tracker's did.
    ``timer`` (a stage timer such as :class:`exaug.pipelines.stages.StageTimer`) is told which time
    is detection ("detect") and which is mesh tracking ("track").
    """

    def __init__(self, detector: FaceDetector, mesh: FaceMesh | None = None, options: FollowOptions | None = None,
                 *, fps: float = 25.0, timer: Timer | None = None, min_cutoff: float = 1.0, beta: float = 10.0,
                 d_cutoff: float = 1.0):
        self.detector = detector
        self.fitter = MeshFitter(mesh, detector.device)
        self.options = options or FollowOptions()
        self.fps = fps
        self.filter_settings = (min_cutoff, beta, d_cutoff)
        self.detections = 0  # full-frame detection passes run, for reports
        self.crop_detections = 0  # frames where MTCNN looked only around faces the mesh lost
        self._timer = timer or (lambda stage: nullcontext())
        self._tracks: list[_Track] = []
        self._searching: list[_Track] = []  # lost faces not found around where they were yet
        self._next_id = 0
        self._since_detection: int | None = None
        self._thumbnail: torch.Tensor | None = None
        self._time = 0.0
        self._pending: list[tuple[torch.Tensor, float, list[TrackedFace]]] = []  # the last frames, to follow back into
        self._window = max(1, min(self.options.detect_every, self.options.follow_back))
        self.frames = 0  # frames fed

    def update_many(self, frames: torch.Tensor | np.ndarray, times: Sequence[float]) -> list[list[TrackedFace]]:
        """The faces of each (H, W, 3) uint8 RGB frame of a chunk, by track id; the lists of frames
        past :attr:`settled` may still grow (a face a later full pass finds, followed back)."""
        frames = torch.as_tensor(frames).to(self.detector.device)
        return [self.update(frame, float(time)) for frame, time in zip(frames, times)]

    @property
    def settled(self) -> int:
        """How many of the first frames fed have faces no later frame adds to."""
        return self.frames - len(self._pending)

    def settle(self) -> None:
        """Settle every frame fed so far: no face found later will be followed back into them (the
        frames after these are not followed, as after a time span's end)."""
        self._pending = []

    def update(self, frame: torch.Tensor, time: float) -> list[TrackedFace]:
        cut = self._scene_cut(frame)
        if cut:  # nothing carries over, and a face found after a cut was not in the shot before it
            self._tracks, self._searching, self._pending = [], [], []
        first_new = self._next_id
        observed: dict[int, np.ndarray] = {}
        if self._tracks:
            with self._timer("track"):
                observed = self._follow(frame, self._tracks, time - self._time)
        lost = [track for track in self._tracks if track.track_id not in observed]
        due = self._since_detection is None or self._since_detection + 1 >= self.options.detect_every
        detection: dict[int, int] = {}
        if cut or due or any(track.misses for track in self._tracks):
            with self._timer("detect"):
                found = self.detector.detect([frame])[0]
            self.detections += 1
            self._since_detection = 0
            with self._timer("track"):
                detection = self._reconcile(frame, found, observed)
        else:
            self._since_detection = (self._since_detection or 0) + 1
            if lost or self._searching:
                self._find_lost(frame, lost + self._searching, observed)
        self._time = time
        faces = []
        for track in self._tracks:
            self._observe(track, observed[track.track_id], time)
            faces.append(self._state(track, detection.get(track.track_id)))
        new = [track for track in self._tracks if track.track_id >= first_new and track.score >= self.options.min_score]
        if new and self._pending:
            self._follow_back(new, time)
        self.frames += 1
        self._pending = (self._pending + [(frame, time, faces)])[-self._window:]
        return faces

    def _scene_cut(self, frame: torch.Tensor) -> bool:
        """Whether ``frame`` starts a new shot: its 32x18 grey thumbnail changed by more than
        ``cut_threshold`` grey levels on average (a pan or a walk changes it by a few)."""
        step = max(1, min(frame.shape[0] // 72, frame.shape[1] // 128))  # every step-th pixel is plenty
        sample = frame[::step, ::step].float()
        grey = sum(weight * sample[..., i] for i, weight in enumerate(LUMA))
        thumbnail = F.adaptive_avg_pool2d(grey[None], (18, 32))[0]
        previous, self._thumbnail = self._thumbnail, thumbnail
        return previous is not None and float((thumbnail - previous).abs().mean()) > self.options.cut_threshold

    def _follow(self, frame: torch.Tensor, tracks: list[_Track], elapsed: float) -> dict[int, np.ndarray]:
        """Each track's mesh in this frame, ``elapsed`` seconds after its last, cropped where its
        motion says it is; lost ones left out."""
        predicted = []
        for track in tracks:
            velocity = track.filter.velocity if track.filter.velocity is not None else 0.0
            ahead = track.raw.copy()
            ahead[:, :2] += velocity * elapsed
            predicted.append(ahead)
        transforms = crop_transforms(torch.from_numpy(np.stack(predicted)).to(frame.device), self.options.crop_scale)
        with torch.no_grad():
            landmarks, scores = self.fitter.mesh(warp_regions(frame, transforms, INPUT_SIZE))
        meshes = to_source(landmarks, transforms).double().numpy()
        observed = {}
        for track, mesh, score, ahead in zip(tracks, meshes, scores.tolist(), predicted):
            if score >= self.options.min_score and not self._jumped(mesh, ahead):
                observed[track.track_id] = mesh
                track.score = score
        return observed

    def _jumped(self, mesh: np.ndarray, predicted: np.ndarray) -> bool:
        """Whether the five alignment points of ``mesh`` landed on average more than ``jump`` face
        sizes from ``predicted``'s: a wrong fit however high its score (the shared clip's woman
        walking past in profile, blurred: the mesh fitted her head facing the other way, its nose on
        her ear, score 0.97; pasted there, the edit smudged her ear)."""
        points, expected = five_points(torch.from_numpy(np.stack([mesh[:, :2], predicted[:, :2]])))
        box = mesh_box(predicted)
        size = max(float((box[2:] - box[:2]).max()), 1.0)
        return float((points - expected).norm(dim=-1).mean()) > self.options.jump * size

    def _follow_back(self, new: list[_Track], time: float) -> None:
        """Follow the faces of tracks just started on this frame back through the held frames, adding
        each to their faces until neither its mesh nor MTCNN around it finds it, or it stands on a
        face already there. Time runs backwards for copies of the tracks with filters of their own,
        so the smoothing and the crop's motion work as they do forwards. Where the mesh loses a face,
        MTCNN looks around it (:meth:`_look_around`) as it does forwards: a 21-pixel face on the shared
        1080p clip, which the mesh holds only a frame or two, was first found by the full pass of
        frame 10 and is in frames 1-9 at full resolution."""
        tracks = []
        for track in new:
            copy = _Track(track.track_id, OneEuroFilter(*self.filter_settings), track.raw, track.smoothed, track.score)
            self._observe(copy, track.raw, -time)
            tracks.append(copy)
        later = time
        for frame, earlier, faces in reversed(self._pending):
            with self._timer("track"):
                observed = self._follow(frame, tracks, later - earlier)
            lost, _, found = self._look_around(frame, [track for track in tracks if track.track_id not in observed])
            if lost:
                with self._timer("track"):
                    matches = self._matches(lost, found)
                    self._refit(frame, [lost[t] for t in matches.values()], found, list(matches), observed)
            kept = []
            for track in tracks:
                mesh = observed.get(track.track_id)
                held = np.stack([face.box for face in faces]) if faces else np.zeros((0, 4))
                if mesh is None or box_iou(mesh_box(mesh)[None], held).max(initial=0.0) >= self.options.iou_threshold:
                    continue
                self._observe(track, mesh, -earlier)
                faces.append(self._state(track, None))
                kept.append(track)
            if not kept:
                return
            tracks, later = kept, earlier

    def _reconcile(self, frame: torch.Tensor, found: ImageFaces, observed: dict[int, np.ndarray]) -> dict[int, int]:
        """Match a detection pass to the tracks: confirm, refit, start and drop tracks. Fills in
        ``observed`` for every track kept; returns track id -> detection index."""
        boxes = np.stack([mesh_box(observed[track.track_id] if track.track_id in observed else track.raw)
                          for track in self._tracks]) if self._tracks else np.zeros((0, 4))
        matches = match_boxes(box_iou(boxes, found.boxes), self.options.iou_threshold)
        by_track = {self._tracks[t].track_id: d for d, t in matches.items()}
        kept = []
        # A full pass decides which faces there are; but a face the mesh still holds that MTCNN
        # missed ``max_misses`` times is looked for around where it was until the next full pass
        # (:meth:`_find_lost`), as a lost face is: MTCNN misses a half-turned face in two frames and
        # finds it in the third, and the next full pass may be ten frames away.
        self._searching = []
        for track in self._tracks:
            if track.track_id in by_track:
                track.misses = 0
                if track.track_id in observed and self._drifted(observed[track.track_id],
                                                                found.landmarks[by_track[track.track_id]]):
                    del observed[track.track_id]
            elif track.track_id in observed and track.misses + 1 < self.options.max_misses:
                track.misses += 1
            else:
                observed.pop(track.track_id, None)
                self._searching.append(track)
                continue
            kept.append(track)
        for index in range(len(found)):
            if index not in matches:
                track = self._new_track()
                kept.append(track)
                by_track[track.track_id] = index
        self._tracks = kept
        refit = [track for track in kept if track.track_id not in observed]
        self._refit(frame, refit, found, [by_track[track.track_id] for track in refit], observed)
        return by_track

    def _find_lost(self, frame: torch.Tensor, lost: list[_Track], observed: dict[int, np.ndarray]) -> None:
        """Look for faces the mesh lost where they were: MTCNN on a square twice each face's size
        around its last mesh (a fraction of a full-frame pass). A face found there is refitted from
        its detection, one found beside it (it moved, or another face stepped in) starts a track, and
        a lost face not found is left out of this frame, as a full pass would leave it, and looked
        for again in the next if MTCNN found no face at all in its square (a face whose square lies
        outside the frame is dropped)."""
        lost, crops, found = self._look_around(frame, lost)
        if not lost:
            self._tracks, self._searching = [track for track in self._tracks if track.track_id in observed], []
            return
        with self._timer("track"):
            held = [mesh_box(observed[track.track_id]) for track in self._tracks if track.track_id in observed]
            held = np.stack(held) if held else np.zeros((0, 4))
            free = [index for index in range(len(found))  # faces no followed face stands on
                    if box_iou(found.boxes[index][None], held).max(initial=0.0) < self.options.iou_threshold]
            found = ImageFaces(found.boxes[free].reshape(-1, 4), found.probs[free], found.landmarks[free].reshape(-1, 5, 2))
            matches = self._matches(lost, found)
            refit, indices = [lost[t] for t in matches.values()], list(matches)
            for track in refit:  # found by MTCNN: a detection, however small its pass
                track.misses = 0
            for index in range(len(found)):
                if index not in matches:
                    refit.append(self._new_track())
                    indices.append(index)
            self._refit(frame, refit, found, indices, observed)
            following = {track.track_id for track in self._tracks if track.track_id in observed}
            self._tracks = ([track for track in self._tracks if track.track_id in following]
                            + [track for track in refit if track.track_id not in following])
            # A face found in the square but not matched moved away or was another face: it started
            # a track of its own, and its old place is not searched again.
            self._searching = [track for track, faces in zip(lost, crops) if track.track_id not in observed and not len(faces)]

    def _look_around(self, frame: torch.Tensor, lost: list[_Track]) -> tuple[list[_Track], list[ImageFaces], ImageFaces]:
        """MTCNN on a square around each of ``lost`` only (:func:`~exaug.faces.crops.search_square`),
        at full resolution: the tracks looked for (those whose square lies inside the frame), the
        faces found in each one's square, and all of them in frame pixels (nothing runs if no square
        is left)."""
        squares = [search_square(track.raw, *frame.shape[:2]) for track in lost]
        lost = [track for track, square in zip(lost, squares) if square is not None]
        regions = [square for square in squares if square is not None]
        if not lost:
            return [], [], ImageFaces.empty()
        with self._timer("detect"):
            crops = self.detector.detect([frame[y0:y1, x0:x1] for x0, y0, x1, y1 in regions])
            found = faces_in_frame(crops, regions)
        self.crop_detections += 1
        return lost, crops, found

    def _matches(self, tracks: list[_Track], found: ImageFaces) -> dict[int, int]:
        """Detection index -> index into ``tracks`` of the faces ``found`` where each track's last mesh was."""
        return match_boxes(box_iou(np.stack([mesh_box(track.raw) for track in tracks]), found.boxes),
                           self.options.iou_threshold)

    def _new_track(self) -> _Track:
        track = _Track(self._next_id, OneEuroFilter(*self.filter_settings), np.zeros((0, 3)), np.zeros((0, 2)))
        self._next_id += 1
        return track

    def _refit(self, frame: torch.Tensor, tracks: list[_Track], found: ImageFaces, indices: list[int],
               observed: dict[int, np.ndarray]) -> None:
        """Mesh each of ``tracks`` afresh from its detection ``found[indices[i]]``; a face the mesh
        cannot fit keeps its last mesh moved onto the detection's five points."""
        if not tracks:
            return
        subset = ImageFaces(found.boxes[indices], found.probs[indices], found.landmarks[indices])
        meshes, scores = self.fitter.fit([frame], [subset])
        for track, mesh, score, points in zip(tracks, meshes.double().numpy(), scores.tolist(), subset.landmarks):
            track.score = score
            observed[track.track_id] = mesh if score >= self.options.min_score else moved_onto(mesh, points)

    def _drifted(self, mesh: np.ndarray, points: np.ndarray) -> bool:
        tracked = five_points(torch.from_numpy(mesh[None, :, :2]))[0].numpy()
        eyes = max(float(np.linalg.norm(points[1] - points[0])), 1.0)
        return float(np.linalg.norm(tracked - points, axis=-1).mean()) > self.options.drift * eyes

    def _observe(self, track: _Track, mesh: np.ndarray, time: float) -> None:
        box = mesh_box(mesh)
        scale = math.sqrt(max(float((box[2] - box[0]) * (box[3] - box[1])), 1.0))
        track.smoothed = track.filter(mesh[:, :2], time, scale)
        track.raw = mesh

    @staticmethod
    def _state(track: _Track, detection: int | None) -> TrackedFace:
        mesh = np.concatenate([track.smoothed, track.raw[:, 2:]], 1)
        points = five_points(torch.from_numpy(track.smoothed[None])).numpy()[0]
        return TrackedFace(track.track_id, points, mesh_box(track.smoothed), track.score, detection, mesh)
