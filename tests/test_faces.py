"""Detection finds every real face; alignment puts landmarks on the template; warps invert."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exaug.faces import FaceAligner, FaceDetector
from exaug.faces.detect import ChannelsLastMaxPool
from exaug.faces.align import (apply_affine, estimate_similarity, get_template, unwarp_faces, warp_faces,
                               warp_regions)
from exaug.io.images import load_image
from exaug.io.sources import discover_sources


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector("cpu")


@pytest.fixture(scope="module")
def photos(faces_dir):
    sources = discover_sources(faces_dir)
    return {source.relpath: load_image(source.path) for source in sources}


@pytest.fixture(scope="module")
def detections(detector, photos):
    return dict(zip(photos, detector.detect(list(photos.values()))))


def test_every_person_photo_yields_one_face(detections):
    people = {name: found for name, found in detections.items() if name.startswith("people/")}
    assert len(people) == 4
    for name, found in people.items():
        assert len(found) == 1, f"{name}: {len(found)} faces"
        assert found.probs[0] > 0.95


def test_group_photo_yields_its_six_faces(detections):
    found = detections["groups/multiface.jpg"]
    assert len(found) == 6
    assert (np.diff(found.probs) <= 0).all(), "faces come most probable first"
    boxes = found.boxes
    assert len({round(x) for x in boxes[:, 0]}) == 6, "six distinct faces, not duplicates"


def test_batched_detection_matches_one_image_at_a_time(detector, photos):
    """An image's faces do not depend on its batch: resumed and sharded runs equal a single run."""
    images = list(photos.values())
    images += [images[1][:1500], images[2][:, :1000]]  # other sizes in the same batch
    together = detector.detect(images)
    alone = [detector.detect([image])[0] for image in images]
    for batched, single in zip(together, alone):
        assert len(batched) == len(single)
        assert np.abs(batched.landmarks - single.landmarks).max() < 0.01
        assert np.abs(batched.probs - single.probs).max() < 1e-4


@pytest.mark.parametrize("kernel", [2, 3])
def test_channels_last_max_pool_equals_torchs_on_every_small_size(kernel):
    """MTCNN's poolings (kernel 2 or 3, stride 2, ceil mode): the same numbers, NaN and inf included,
    the same shape and layout, and the same error where the input is smaller than the kernel."""
    pool = ChannelsLastMaxPool(kernel, 2)
    for height, width in itertools.product(range(1, 12), range(1, 12)):
        x = torch.randn(40, 16, height, width) * 100
        x[0, 0, 0, 0], x[1, 3, -1, -1], x[2, 5, -1, 0] = float("nan"), float("inf"), -float("inf")
        x = x.contiguous(memory_format=torch.channels_last)
        assert x.numel() >= pool.SMALL or height * width < 110  # the fast path runs on the larger ones
        try:
            expected = F.max_pool2d(x, kernel, 2, ceil_mode=True)
        except RuntimeError:  # "output size is too small"
            with pytest.raises(RuntimeError):
                pool(x)
            continue
        pooled = pool(x)
        assert pooled.shape == expected.shape and pooled.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(pooled.nan_to_num(7.0), expected.nan_to_num(7.0)), (height, width)
        assert torch.isnan(pooled[0, 0, 0, 0])


def test_faster_pooling_finds_the_very_same_faces(photos):
    """The detector's own pooling changes nothing: boxes, probabilities and landmarks bit for bit
    those of facenet-pytorch's layers on the shared photos (a group shot and portraits)."""
    fast, plain = FaceDetector("cpu"), FaceDetector("cpu")
    for network in (plain._mtcnn.pnet, plain._mtcnn.rnet, plain._mtcnn.onet):
        for name, layer in list(network.named_children()):
            if isinstance(layer, ChannelsLastMaxPool):
                setattr(network, name, nn.MaxPool2d(layer.kernel, layer.stride, ceil_mode=True))
    assert any(isinstance(layer, ChannelsLastMaxPool) for layer in fast._mtcnn.rnet.children())
    images = list(photos.values())
    for ours, theirs in zip(fast.detect(images), plain.detect(images)):
        assert len(ours) and np.array_equal(ours.boxes, theirs.boxes)
        assert np.array_equal(ours.probs, theirs.probs) and np.array_equal(ours.landmarks, theirs.landmarks)


def test_full_resolution_coordinates_after_downscaled_detection(people_dir):
    """Detection runs on a downscaled copy, but landmarks must land on the full-resolution face."""
    image = load_image(people_dir / "paul_rudd" / "1.jpg")  # 2048 px tall
    coarse = FaceDetector("cpu", max_side=512).detect([image])[0]
    fine = FaceDetector("cpu", max_side=2048).detect([image])[0]
    eye_distance = np.linalg.norm(fine.landmarks[0, 0] - fine.landmarks[0, 1])
    assert np.linalg.norm(coarse.landmarks[0] - fine.landmarks[0], axis=1).max() < 0.08 * eye_distance


def test_largest_and_thresholds(detector, photos):
    group = photos["groups/multiface.jpg"]
    largest = FaceDetector("cpu", faces="largest").detect([group])[0]
    everyone = detector.detect([group])[0]
    areas = (everyone.boxes[:, 2] - everyone.boxes[:, 0]) * (everyone.boxes[:, 3] - everyone.boxes[:, 1])
    assert len(largest) == 1 and np.allclose(largest.boxes[0], everyone.boxes[np.argmax(areas)])
    assert len(FaceDetector("cpu", min_face_size=400).detect([group])[0]) == 0
    # A minimum larger than the detection canvas finds nothing, rather than failing inside MTCNN.
    assert len(FaceDetector("cpu", min_face_size=3000, max_side=512).detect([group])[0]) == 0


@pytest.mark.parametrize("template", ["exaug", "arcface"])
def test_aligned_landmarks_land_on_the_template(detector, photos, detections, template):
    """Re-detect the five points on every aligned real face: they sit on the template."""
    aligner = FaceAligner(template, device="cpu")
    images = list(photos.values())
    aligned = aligner.align(images, [detections[name] for name in photos])
    assert len(aligned) == 10 and aligned.images.shape[1:] == (3, aligner.size, aligner.size)
    # MTCNN misplaces points of a face that touches the border; give it the margin a photo has.
    margin = aligner.size // 2
    padded = np.pad(aligned.images.permute(0, 2, 3, 1).numpy(), ((0, 0), (margin, margin), (margin, margin), (0, 0)))
    redetected = detector.detect(list(padded))
    distances = np.array([np.linalg.norm(found.landmarks[0] - margin - aligner.template.points, axis=1).mean()
                          for found in redetected])
    # The residual is the face's own shape against the template plus MTCNN's noise: a few pixels.
    assert (distances < 0.05 * aligner.size).all(), distances.round(2)
    assert np.median(distances) < 0.035 * aligner.size, distances.round(2)


def _blob_image(points: np.ndarray, height: int, width: int, sigma: float) -> torch.Tensor:
    ys, xs = np.mgrid[0:height, 0:width]
    image = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points)
    return torch.tensor(image, dtype=torch.float32)[None].repeat(3, 1, 1) * 255


@pytest.mark.parametrize("scale, degrees", [(0.25, 0), (1.0, 15), (3.0, -30)])
def test_warp_is_subpixel_exact(scale, degrees):
    """Gaussian blobs at known points end up centred on the template, whatever the scale and roll,
    through the photo aligner's warp and video's."""
    template = get_template("exaug", 128)
    theta = np.deg2rad(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / scale
    source_points = (template.points - 64) @ rotation.T + [500, 400]
    image = _blob_image(source_points, 800, 1000, sigma=2.0 / scale)
    transform = estimate_similarity(torch.tensor(source_points)[None], torch.tensor(template.points))
    assert torch.allclose(apply_affine(transform, torch.tensor(source_points, dtype=torch.float32)[None])[0],
                          torch.tensor(template.points, dtype=torch.float32), atol=1e-3)
    faces = {"warp_faces": warp_faces(image, transform, 128)[0, 0].numpy(),
             # video's crops: each from its own footprint of a uint8 frame, bicubic unless reduced
             "warp_regions": warp_regions(image.permute(1, 2, 0).round().to(torch.uint8), transform, 128)[0, 0].numpy()}
    for name, face in faces.items():
        for x, y in template.points:
            x0, y0 = round(x), round(y)
            window = face[y0 - 5:y0 + 6, x0 - 5:x0 + 6]
            grid_y, grid_x = np.mgrid[y0 - 5:y0 + 6, x0 - 5:x0 + 6]
            centre = ((window * grid_x).sum() / window.sum(), (window * grid_y).sum() / window.sum())
            assert np.hypot(centre[0] - x, centre[1] - y) < 0.15, name


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_a_crop_beyond_the_frame_is_black_or_goes_on_with_the_edge(people_dir, padding):
    """A 64-pixel crop shifted 10 pixels past a real photo's left edge and 6 past its top: inside,
    the photo's pixels exactly; beyond, black, or (for faces to edit) the edge row and column
    repeated, so a warp that pulls from there brings no dark band into the frame."""
    frame = torch.from_numpy(load_image(people_dir / "kate_siegel" / "1.jpg"))
    transform = torch.tensor([[[1.0, 0.0, 10.0], [0.0, 1.0, 6.0]]])  # frame pixel -> crop pixel
    crop = warp_regions(frame, transform, 64, padding)[0].permute(1, 2, 0).round()
    inside = frame[:58, :54].float()
    assert torch.equal(crop[6:, 10:], inside)
    if padding == "zeros":
        assert not crop[:6].any() and not crop[:, :10].any()
    else:
        assert torch.equal(crop[:6, 10:], inside[:1].expand(6, -1, -1))
        assert torch.equal(crop[6:, :10], inside[:, :1].expand(-1, 10, -1))
        assert torch.equal(crop[:6, :10], inside[:1, :1].expand(6, 10, -1))


def test_unwarp_puts_the_face_back(people_dir, detector):
    """Align then warp back unchanged: the face region of the original is reproduced."""
    image = load_image(people_dir / "kate_siegel" / "1.jpg")
    found = detector.detect([image])
    aligner = FaceAligner("exaug", 256, device="cpu")
    aligned = aligner.align([image], found)
    patch = unwarp_faces(aligned.images.float(), aligned.transforms, image.shape[:2])[0]
    _, h, w = patch.pixels.shape
    original = torch.from_numpy(image).permute(2, 0, 1).float()[:, patch.top:patch.top + h, patch.left:patch.left + w]
    x0, y0, x1, y1 = (found[0].boxes[0] - [patch.left, patch.top, patch.left, patch.top]).astype(int)
    inner = (slice(None), slice(y0 + 10, y1 - 10), slice(x0 + 10, x1 - 10))
    error = (patch.pixels[inner] - original[inner]).abs().mean().item()
    assert error < 4.0, f"mean error {error:.2f} grey levels inside the face"
