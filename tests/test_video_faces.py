"""Faces edited at their size in the frame: a large face keeps its detail instead of coming back as
a 128-pixel upscale, and the tracker's meshes stand in for the generator's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exaug.faces.align import apply_affine, estimate_similarity, get_template, warp_regions
from exaug.faces.detect import FaceDetector
from exaug.faces.follow import FaceFollower
from exaug.model.default import model_path
from exaug.model.generator import ExpressionGenerator
from exaug.io.video import VideoWriter, probe
from exaug.pipelines.video import VideoOptions, edit_video
from exaug.pipelines.video_faces import FaceEditor
from videotools import Shot, all_frames, face_sharpness, photo_clip, psnr

FRAMES = 4


@pytest.fixture(scope="module")
def large_face(tmp_path_factory, people_dir) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 720x480 clip of a real portrait, the camera drifting slightly: one face about 270 x 380 px.
    Returns the clip, its frames and MTCNN's box of the face in each frame."""
    clip = photo_clip(tmp_path_factory.mktemp("large") / "large.mp4",
                      [Shot(people_dir / "angelina_jolie" / "1.jpg", FRAMES, (0.0, 0.12, 1.0), (0.01, 0.13, 0.98))],
                      size=(720, 480))
    frames = all_frames(clip)[0]
    boxes = np.concatenate([found.boxes for found in FaceDetector("cpu").detect(list(frames))])
    assert len(boxes) == FRAMES and (boxes[:, 2] - boxes[:, 0]).min() > 250
    return clip, frames, boxes


@pytest.fixture(scope="module")
def guided() -> ExpressionGenerator:
    return ExpressionGenerator.load(model_path(None), "cpu")


@pytest.fixture(scope="module")
def tracked(large_face):
    _, frames, _ = large_face
    follower = FaceFollower(FaceDetector("cpu"))
    return follower.update_many(frames, np.arange(FRAMES) / 25)


def _edited(editor: FaceEditor, frames: np.ndarray, tracked) -> np.ndarray:
    canvas = torch.from_numpy(frames.copy())
    ones = np.ones(len(frames))
    return editor.paste(canvas, editor.edit(canvas, tracked, ones), ones).numpy()


def test_large_faces_keep_their_detail(large_face, guided, tracked):
    _, frames, boxes = large_face
    full = FaceEditor(guided, "happy")
    assert full.size_for(450.0) == 480 and full.size_for(90.0) == 128 and full.size_for(2000.0) == 512
    sharp = face_sharpness(_edited(full, frames, tracked), frames, boxes)
    small = face_sharpness(_edited(FaceEditor(guided, "happy", max_size=guided.image_size), frames, tracked),
                           frames, boxes)
    assert sharp >= 0.7 and small < 0.5 and sharp > 1.6 * small, (sharp, small)


def test_large_face_through_exaug_video(large_face, guided, tmp_path):
    """End to end, against a plain transcode at the same crf: the codec's own loss is not the edit's."""
    clip, frames, boxes = large_face
    output, plain = tmp_path / "happy.mp4", tmp_path / "plain.mp4"
    options = VideoOptions(emotion="happy", preset="veryfast")
    summary = edit_video(clip, output, guided, options, show_progress=False)
    assert summary.faces_per_frame == [1] * FRAMES
    with VideoWriter(plain, probe(clip), crf=options.crf, preset=options.preset) as writer:
        writer.write(frames, all_frames(clip)[1])
    edited, transcoded = all_frames(output)[0], all_frames(plain)[0]
    assert np.abs(edited.astype(np.int16) - frames).max() > 30, "the face is edited"
    assert face_sharpness(edited, frames, boxes) >= 0.7 * face_sharpness(transcoded, frames, boxes)


def test_tracked_meshes_are_where_the_generator_finds_them(large_face, guided, tracked):
    """The tracker's smoothed mesh, mapped into the aligned face, agrees with the mesh the generator
    would compute from that face itself, within two of the model's 128 pixels on average (the smoothing
    lags a drifting camera a little): handing it on skips a mesh run without moving the warp."""
    _, frames, _ = large_face
    size = 480
    faces = [face for found in tracked for face in found]
    points = torch.from_numpy(np.stack([face.landmarks for face in faces]))
    transforms = estimate_similarity(points, torch.from_numpy(get_template("exaug", size).points))
    crops = torch.cat([warp_regions(torch.from_numpy(frame), transform[None], size)
                       for frame, transform in zip(frames, transforms)]).round().to(torch.uint8)
    handed = apply_affine(transforms.double(), torch.from_numpy(np.stack([face.mesh[:, :2] for face in faces])))
    own = guided.meshes(crops).double() * (size / guided.image_size)
    error = (handed - own).norm(dim=-1).mean(-1) / size
    assert (error < 2 / guided.image_size).all(), error


def test_faces_the_model_would_leave_are_not_cut_out_and_pasted_back(large_face, guided, tracked):
    """A face in profile comes back from the guided model exactly as it is; cut out and pasted back it
    would still be resampled twice (softened), so the editor leaves it in the frame untouched."""
    from dataclasses import replace

    from exaug.faces.mesh import NOSE_TIP

    _, frames, _ = large_face

    def in_profile(face):
        mesh = face.mesh.astype(np.float64)
        moved = mesh - mesh[NOSE_TIP]
        turned = mesh.copy()
        turned[:, 0] = moved[:, 0] * np.cos(1.2) + moved[:, 2] * np.sin(1.2) + mesh[NOSE_TIP, 0]
        return replace(face, mesh=turned.astype(face.mesh.dtype))

    profiles = [[in_profile(face) for face in found] for found in tracked]
    editor = FaceEditor(guided, "happy")
    assert not guided.moves(torch.from_numpy(np.stack([found[0].mesh for found in profiles]))).any()
    assert guided.moves(torch.from_numpy(np.stack([found[0].mesh for found in tracked]))).all()
    assert editor.edit(torch.from_numpy(frames.copy()), profiles, np.ones(FRAMES)) == []
    assert np.array_equal(_edited(editor, frames, profiles), frames)
    assert not np.array_equal(_edited(editor, frames, tracked), frames)


@pytest.fixture(scope="module")
def rising_face(tmp_path_factory, people_dir) -> Path:
    """14 frames of the camera tilting up a portrait: mouth and nose come in at the top edge, the
    whole face by frame 5 (where per-frame MTCNN first finds it)."""
    return photo_clip(tmp_path_factory.mktemp("rising") / "rising.mp4",
                      [Shot(people_dir / "angelina_jolie" / "1.jpg", 14, (0.075, 0.45, 0.85), (0.1, 0.1, 0.8))])


def test_a_face_coming_in_between_full_passes_is_edited_from_where_the_mesh_holds_it(rising_face, guided, tmp_path):
    """Full passes on frames 0 and 10 only: the face is first found on frame 10 and followed back, and
    the chunks are rendered only once that is done, so frames 2-9 come out edited too (on frames 2-4
    the mesh holds the face from the nose down). Cut by the top edge, the face's crop goes on beyond
    the frame with the edge's own pixels: black there was pulled into the frame by the warp, a dark
    band along the edge (its darkest 32 columns 82 and 42 grey levels darker on frames 2 and 3; 10
    and 17 now, the edit moving the hair's edge)."""
    frames, pts = all_frames(rising_face)
    per_frame = [len(found) for found in FaceDetector("cpu").detect(list(frames))]
    assert per_frame == [0] * 5 + [1] * 9
    output, plain = tmp_path / "happy.mp4", tmp_path / "plain.mp4"
    options = VideoOptions(emotion="happy", preset="veryfast", chunk_size=4)
    summary = edit_video(rising_face, output, guided, options, show_progress=False)
    assert summary.detections == 2 and summary.faces_per_frame == [0] * 2 + [1] * 12
    with VideoWriter(plain, probe(rising_face), crf=options.crf, preset=options.preset) as writer:
        writer.write(frames, pts)
    edited, transcoded = all_frames(output)[0], all_frames(plain)[0]
    codec_loss = np.array([psnr(a, b) for a, b in zip(transcoded, frames)])  # about 38.5 dB at crf 18
    quality = np.array([psnr(a, b) for a, b in zip(edited, frames)])
    assert (quality[:2] > codec_loss[:2] - 1).all() and (quality[2:] < codec_loss[2:] - 5).all(), (quality, codec_loss)
    columns = (edited[2:5, :3].astype(np.float32) - transcoded[2:5, :3]).mean(axis=(1, 3))  # the edge rows
    top = np.stack([np.convolve(row, np.ones(32) / 32, "valid") for row in columns]).min(axis=1)  # its darkest 32 columns
    assert (top > -25).all(), top
