"""The bundled face mesh: faithful to MediaPipe's network, consistent with MTCNN, measuring expressions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA, cuda_only
from exaug.faces.detect import FaceDetector
from exaug.faces.mesh import (LEFT_EYE, LOWER_LIP_INNER, MOUTH_CORNERS, NUM_POINTS, RIGHT_EYE, UPPER_LIP_INNER,
                              FaceMesh, MeshFitter, five_points, load_triangles, mouth_opening)
from exaug.io.images import load_image
from exaug.io.sources import discover_sources
from exaug.io.store import read_faces
from exaug.pipelines.align import AlignOptions, align_dataset

REFERENCE = REPO / "tests" / "data" / "face_mesh_reference.npz"


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def fitter(mesh) -> MeshFitter:
    return MeshFitter(mesh, device="cpu")


def _faces(paths: list[Path]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(load_image(path)).permute(2, 0, 1) for path in paths])


def test_torch_module_matches_the_reference_interpreter(mesh, ckplus_dir):
    """Landmarks litert computed at conversion time (scripts/convert_face_mesh.py) on shared faces."""
    reference = np.load(REFERENCE)
    faces = _faces([SHARED_DATA / name for name in reference["images"]])
    with torch.no_grad():
        result = mesh(faces)
    size = faces.shape[-1]
    # The reference is in 192-pixel units with pixel edges at integers; the module answers in crop pixels.
    expected = reference["landmarks"].copy()
    expected[..., :2] = expected[..., :2] * size / 192 - 0.5
    error_at_192 = np.abs(result.landmarks[..., :2].numpy() - expected[..., :2]).max() * 192 / size
    assert result.landmarks.shape == (len(faces), NUM_POINTS, 3)
    assert error_at_192 < 0.5
    assert np.allclose(result.scores.numpy(), reference["scores"], atol=1e-3) and (result.scores > 0.99).all()


def _inter_ocular(landmarks: torch.Tensor) -> torch.Tensor:
    xy = landmarks[..., :2]
    return (xy[:, list(RIGHT_EYE)].mean(1) - xy[:, list(LEFT_EYE)].mean(1)).norm(dim=-1)


def test_mesh_agrees_with_mtcnn_five_points_on_people_photos(fitter, faces_dir):
    images = [load_image(source.path) for source in discover_sources(faces_dir)]
    detections = FaceDetector("cpu").detect(images)
    result = fitter.fit(images, detections)
    mtcnn = torch.cat([torch.from_numpy(found.landmarks) for found in detections if len(found)])
    assert len(result.landmarks) == len(mtcnn) == 10 and (result.scores > 0.9).all()
    error = (five_points(result.landmarks) - mtcnn).norm(dim=-1) / _inter_ocular(result.landmarks)[:, None]
    assert error.median() < 0.05  # eye centres, nose tip, mouth corners: a few % of the eye distance
    assert error.max() < 0.15


def _pairs(ckplus_dir: Path, expression: str, count: int) -> tuple[list[Path], list[Path]]:
    """Peak frames of ``expression`` and the neutral first frame of the same sequence."""
    peaks = sorted((ckplus_dir / expression).glob("S*.png"))[:count]
    return peaks, [ckplus_dir / "neutral" / f"{peak.name[:8]}_00000001.png" for peak in peaks]


def _measure(fitter: MeshFitter, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Inner-lip opening and mouth width, in eye distances, of each face."""
    images = [load_image(path) for path in paths]
    detections = FaceDetector("cpu", faces="largest").detect(images)
    landmarks = fitter.fit(images, detections).landmarks
    assert len(landmarks) == len(paths)
    xy, eyes = landmarks[..., :2], _inter_ocular(landmarks)
    opening = (xy[:, LOWER_LIP_INNER] - xy[:, UPPER_LIP_INNER]).norm(dim=-1) / eyes
    width = (xy[:, MOUTH_CORNERS[1]] - xy[:, MOUTH_CORNERS[0]]).norm(dim=-1) / eyes
    return opening.numpy(), width.numpy()


def test_surprise_opens_the_inner_lips_and_happy_widens_the_mouth(fitter, ckplus_dir):
    surprise, neutral = _pairs(ckplus_dir, "surprise", 20)
    (open_peak, _), (open_neutral, _) = _measure(fitter, surprise), _measure(fitter, neutral)
    assert (open_peak > open_neutral).all() and np.median(open_peak - open_neutral) > 0.1, (open_peak, open_neutral)
    happy, neutral = _pairs(ckplus_dir, "happy", 20)
    (_, wide_peak), (_, wide_neutral) = _measure(fitter, happy), _measure(fitter, neutral)
    assert (wide_peak > wide_neutral).all() and np.median(wide_peak / wide_neutral) > 1.2, (wide_peak, wide_neutral)


def _meshes(fitter: MeshFitter, paths: list[Path]) -> torch.Tensor:
    images = [load_image(path) for path in paths]
    landmarks = fitter.fit(images, FaceDetector("cpu", faces="largest").detect(images)).landmarks
    assert len(landmarks) == len(paths)
    return landmarks


def test_mouth_opening_tells_closed_mouths_from_open_ones_at_any_tilt(fitter, ckplus_dir):
    """The painter's gate reads it: CK+'s neutral first frames are closed, surprise peaks open wide,
    and smiles part the lips; turning the face in the image changes nothing."""
    from exaug.model.regions import MOUTH_CLOSED, MOUTH_OPEN

    surprise, neutral = _pairs(ckplus_dir, "surprise", 12)
    happy, _ = _pairs(ckplus_dir, "happy", 12)
    closed, wide, smiles = (mouth_opening(_meshes(fitter, paths)) for paths in (neutral, surprise, happy))
    assert (closed < MOUTH_CLOSED).float().mean() >= 0.9 and closed.abs().max() < MOUTH_OPEN, closed
    assert (wide > MOUTH_OPEN).float().mean() >= 0.9 and wide.median() > 0.25, wide
    assert smiles.median() > MOUTH_OPEN, smiles
    landmarks = _meshes(fitter, surprise[:4])
    angle = torch.tensor(0.4)
    turn = torch.tensor([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]])
    turned = landmarks.clone()
    turned[..., :2] = landmarks[..., :2] @ turn.T + 50
    assert torch.allclose(mouth_opening(turned), mouth_opening(landmarks), atol=1e-5)


def test_gradients_reach_the_input_image(mesh, ckplus_dir):
    faces = _faces([ckplus_dir / "neutral" / "S010_002_00000001.png"]).float().requires_grad_()
    result = mesh(faces)
    (result.landmarks[:, UPPER_LIP_INNER, 1] - result.landmarks[:, LOWER_LIP_INNER, 1]).sum().backward()
    assert faces.grad is not None and faces.grad.abs().sum() > 0
    # The gradient of the mouth's points sits on the mouth, not spread evenly over the crop.
    grad = faces.grad.abs().sum((0, 1))
    lower_half, upper_half = grad[64:].sum(), grad[:64].sum()
    assert lower_half > upper_half


def test_a_crop_without_a_face_scores_low(mesh, people_dir):
    """The score is what video tracking uses to notice a lost face: a background crop must say so."""
    image = load_image(people_dir / "paul_rudd" / "1.jpg")
    corner = torch.from_numpy(np.ascontiguousarray(image[:96, :96])).permute(2, 0, 1)[None]
    flat = torch.full((1, 3, 128, 128), 127, dtype=torch.uint8)
    with torch.no_grad():
        scores = mesh(torch.cat([torch.nn.functional.interpolate(corner.float(), size=128), flat.float()])).scores
    assert (scores < 0.5).all(), scores


def test_triangles_index_the_mesh():
    triangles = load_triangles()
    assert triangles.shape[1] == 3 and len(triangles) > 800
    assert triangles.min() >= 0 and triangles.max() == NUM_POINTS - 1


def test_align_with_mesh_stores_it_in_source_pixels(tmp_path, people_dir):
    output = tmp_path / "aligned.h5"
    command = [sys.executable, "-m", "exaug", "align", str(people_dir), "-o", str(output), "--mesh", "--quiet"]
    assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    with h5py.File(output) as h5:
        assert h5["mesh"].shape == (4, NUM_POINTS, 3) and h5["mesh"].dtype == np.float32
    with read_faces(output) as table:
        meshes, landmarks = table.extra["mesh"], table.extra["landmarks"]
    mesh_points = five_points(torch.from_numpy(meshes)).numpy()
    eyes = np.linalg.norm(landmarks[:, 1] - landmarks[:, 0], axis=1)
    assert (np.linalg.norm(mesh_points - landmarks, axis=2).max(1) / eyes < 0.15).all()

    folder = tmp_path / "aligned"
    align_dataset(people_dir, folder, AlignOptions(device="cpu", mesh=True), show_progress=False)
    with read_faces(folder) as table:
        assert np.allclose(table.extra["mesh"], meshes, atol=1e-3)
    header = (folder / "manifest.csv").read_text().splitlines()[0].split(",")
    assert "mesh" in header


def test_align_without_mesh_writes_no_mesh(tmp_path, people_dir):
    output = tmp_path / "aligned.h5"
    align_dataset(people_dir, output, AlignOptions(device="cpu"), show_progress=False)
    with h5py.File(output) as h5:
        assert "mesh" not in h5 and "landmarks" in h5


@cuda_only
def test_cuda_mesh_matches_cpu(mesh, ckplus_dir):
    faces = _faces(sorted((ckplus_dir / "surprise").glob("S*.png"))[:8])
    with torch.no_grad():
        cpu = mesh(faces)
        gpu = FaceMesh().cuda()(faces.cuda())
    assert torch.allclose(gpu.landmarks.cpu(), cpu.landmarks, atol=0.05)
