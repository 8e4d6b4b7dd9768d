"""Dense face geometry: MediaPipe's 468-point face mesh as an ordinary torch module.

MTCNN's five points say where a face is; an expression lives in where the lips, eyelids, brows and
jaw are. MediaPipe's face landmark network (Apache-2.0) is the field's standard dense landmarker:
468 points with relative depth from a 192 x 192 crop, about 0.6 M parameters, fast on a CPU. Its
weights are converted once from the ``mediapipe`` 0.10.21 wheel by ``scripts/convert_face_mesh.py``
and ship in ``exaug/weights/face_mesh.pt`` (``exaug/weights/NOTICE`` has the licence and origin);
nothing is downloaded and mediapipe is not needed at run time.

The network is rebuilt here layer by layer (a stem, fourteen residual blocks, a landmark head and a
face-score head) rather than interpreted from the tflite graph, so it is differentiable with
respect to its input: a loss can ask that a generated face's mesh lands on a target geometry.

Coordinates follow exaug's convention (pixel ``i`` is centred on ``i``): landmarks come back in the
pixels of the crop that went in, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exaug.faces.align import FaceAligner, Template, apply_affine, get_template, invert_affine
from exaug.faces.detect import ImageFaces

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "face_mesh.pt"
INPUT_SIZE = 192
NUM_POINTS = 468

# Named groups of mesh indices (MediaPipe's topology), ordered along each contour. "Left" and
# "right" are the image's: the subject's right eye is on the image's left, as in MTCNN's points.
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LEFT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
RIGHT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
JAW_LINE = FACE_OVAL[9:28]  # ear to ear under the chin (323 ... 93)
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220, 115, 48, 64)
NOSE_TIP = 1
CHEEKBONES = (234, 454)  # the face outline's widest points, image left and right
MOUTH_CORNERS = (61, 291)  # image left, image right
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
# The inner lips' facing points, corner to corner: each upper point above its lower partner.
_UPPER_INNER_ROW, _LOWER_INNER_ROW = (80, 81, 82, 13, 312, 311, 310), (88, 178, 87, 14, 317, 402, 318)
GROUPS: dict[str, tuple[int, ...]] = {
    "lips_outer": LIPS_OUTER, "lips_inner": LIPS_INNER, "left_eye": LEFT_EYE, "right_eye": RIGHT_EYE,
    "left_brow": LEFT_BROW, "right_brow": RIGHT_BROW, "face_oval": FACE_OVAL, "jaw_line": JAW_LINE,
    "nose": NOSE,
}


class MeshResult(NamedTuple):
    landmarks: Tensor  # (N, 468, 3): x, y in the input crop's pixels, z relative depth (same scale)
    scores: Tensor  # (N,) probability that the crop holds a face


class _SamePad(nn.Module):
    """TensorFlow's "SAME" padding for a 3x3 kernel at stride 2: only right and bottom (the input
    sizes here are even). At stride 1 it is one pixel each side, which the convolution pads itself
    (bit for bit the same, without copying every block's input: the mesh runs 6-10% faster)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, 1, 0, 1))


class ResidualBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, added to the input, then PReLU. A stride-2 block halves the
    resolution; its shortcut max-pools and pads the new channels with zeros."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.pad = _SamePad() if stride == 2 else nn.Identity()
        self.depthwise = nn.Conv2d(channels_in, channels_in, kernel_size=3, stride=stride, groups=channels_in,
                                   padding=1 if stride == 1 else 0)
        self.pointwise = nn.Conv2d(channels_in, channels_out, kernel_size=1)
        self.activation = nn.PReLU(channels_out)
        self.stride, self.extra_channels = stride, channels_out - channels_in

    def forward(self, x: Tensor) -> Tensor:
        shortcut = F.max_pool2d(x, kernel_size=2) if self.stride == 2 else x
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return self.activation(self.pointwise(self.depthwise(self.pad(x))) + shortcut)


class _Projection(nn.Sequential):
    """1x1 convolution to fewer channels, then PReLU (the heads' narrowing step)."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel_size=1)
        self.activation = nn.PReLU(channels_out)


def _head(channels_out: int, *, deep: bool) -> nn.Sequential:
    """3x3 -> 1x1 output head. The landmark head has two more 128-channel blocks than the score head."""
    blocks = [ResidualBlock(128, 128, stride=2)]
    if deep:
        blocks += [ResidualBlock(128, 128), ResidualBlock(128, 128)]
    blocks += [_Projection(128, 32), ResidualBlock(32, 32), nn.Conv2d(32, channels_out, kernel_size=3)]
    return nn.Sequential(*blocks)


class FaceMesh(nn.Module):
    """468 landmarks and a face score for each crop in a batch.

    Input: ``(N, 3, H, W)`` RGB faces, uint8 or float in [0, 255], roughly centred with some margin
    around the face (an ``exaug``-template aligned face works; :class:`MeshFitter` makes the crop
    from a detection).
    Square crops of any size are resized to 192 internally (differentiably).
    """

    def __init__(self, weights: Path | str | None = WEIGHTS):
        super().__init__()
        self.stem = nn.Sequential(_SamePad(), nn.Conv2d(3, 16, kernel_size=3, stride=2), nn.PReLU(16))
        widths = [(16, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1),
                  (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 128, 2), (128, 128, 1),
                  (128, 128, 1)]
        self.backbone = nn.Sequential(*(ResidualBlock(i, o, s) for i, o, s in widths))  # 192 -> 6 x 6 x 128
        self.landmark_head = _head(3 * NUM_POINTS, deep=True)
        self.score_head = _head(1, deep=False)
        if weights is not None:
            payload = torch.load(Path(weights), map_location="cpu", weights_only=True)
            self.load_state_dict({name: value.float() for name, value in payload["state_dict"].items()})
        # Channels-last: its depthwise convolutions run about twice as fast that way on a CPU.
        self.to(memory_format=torch.channels_last).eval()

    def forward(self, images: Tensor) -> MeshResult:
        size = images.shape[-1]
        x = images.float() / 255.0
        if size != INPUT_SIZE:
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=size > INPUT_SIZE)
        features = self.backbone(self.stem(x.contiguous(memory_format=torch.channels_last)))
        points = self.landmark_head(features).reshape(-1, NUM_POINTS, 3)
        # The network answers in 192-pixel units with pixel edges at integers; exaug centres pixels.
        scale = size / INPUT_SIZE
        landmarks = torch.cat([points[..., :2] * scale - 0.5, points[..., 2:] * scale], -1)
        return MeshResult(landmarks, torch.sigmoid(self.score_head(features).flatten()))


def five_points(landmarks: Tensor) -> Tensor:
    """MTCNN-style ``(N, 5, 2)`` points from meshes: eye centres, nose tip, mouth corners (image
    left before right), so a mesh can drive exaug's 5-point alignment."""
    xy = landmarks[..., :2]
    return torch.stack([xy[:, list(LEFT_EYE)].mean(1), xy[:, list(RIGHT_EYE)].mean(1), xy[:, NOSE_TIP],
                        xy[:, MOUTH_CORNERS[0]], xy[:, MOUTH_CORNERS[1]]], 1)


def mouth_opening(landmarks: Tensor) -> Tensor:
    """``(N,)`` gap between the inner lips over the mouth's width, measured square to the line
    through the mouth corners (so a tilted face reads the same). On CK+ at 128 px: about 0.03 for a
    closed mouth (90% of neutral frames under 0.05), 0.12-0.28 for smiles showing teeth, up to 0.5
    for surprise."""
    xy = landmarks[..., :2].double()
    axis = xy[:, MOUTH_CORNERS[1]] - xy[:, MOUTH_CORNERS[0]]
    width = axis.norm(dim=-1).clamp_min(1e-6)
    down = torch.stack([-axis[:, 1], axis[:, 0]], -1) / width[:, None]  # image down for an upright face
    gap = ((xy[:, list(_LOWER_INNER_ROW)] - xy[:, list(_UPPER_INNER_ROW)]) * down[:, None]).sum(-1).mean(1)
    return (gap / width).to(landmarks.dtype)


def head_turn(landmarks: Tensor) -> Tensor:
    """``(N,)`` how far each face is turned from the camera: the nose tip's offset from the middle of
    the line between the cheekbones, along it, over its length (MediaPipe's mesh places the hidden
    side too). On the MJPEG clip's faces: median 0.15, three-quarter views 0.3-0.5, profiles 0.85-1.3."""
    xy = landmarks[..., :2].double()
    left, right = xy[:, CHEEKBONES[0]], xy[:, CHEEKBONES[1]]
    axis = right - left
    offset = ((xy[:, NOSE_TIP] - (left + right) / 2) * axis).sum(-1) / (axis * axis).sum(-1).clamp_min(1e-6)
    return offset.abs().to(landmarks.dtype)


def head_pitch(landmarks: Tensor) -> Tensor:
    """``(N,)`` how far each face's nose tip sits below the middle of the line between the cheekbones,
    square to it, over its length: it grows as the head tilts down (the nose stands out of the face)
    and shrinks as it tilts up: about 0.012 a degree (CK+ meshes tilted about the nose tip by their
    own depth). CK+: median 0.13, 99% within 0.05-0.25. On the shared 1080p clip: 0.07-0.16 looking
    at the camera, 0.21-0.28 looking a little down, 0.34-0.44 a boy looking down steeply."""
    xy = landmarks[..., :2].double()
    left, right = xy[:, CHEEKBONES[0]], xy[:, CHEEKBONES[1]]
    axis = right - left
    down = torch.stack([-axis[..., 1], axis[..., 0]], -1)  # image down for an upright face
    offset = ((xy[:, NOSE_TIP] - (left + right) / 2) * down).sum(-1) / (axis * axis).sum(-1).clamp_min(1e-6)
    return offset.to(landmarks.dtype)


def inside_polygon(points: Tensor, landmarks: Tensor, contour: Sequence[int]) -> Tensor:
    """``(N, P)`` whether each of the ``(N or 1, P, 2)`` points lies inside the polygon ``contour``
    (mesh indices, in order) of each face's ``(N, 468, 2+)`` landmarks (even-odd rule)."""
    polygon = landmarks[:, list(contour), :2].to(points.dtype)
    x, y = points[..., None, 0], points[..., None, 1]
    x0, y0 = polygon[:, None, :, 0], polygon[:, None, :, 1]
    x1, y1 = polygon.roll(-1, 1)[:, None, :, 0], polygon.roll(-1, 1)[:, None, :, 1]
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + 1e-9) + x0)
    return crosses.sum(-1) % 2 == 1


def pixel_centres(rows: slice, columns: slice, device: torch.device | str = "cpu") -> Tensor:
    """``(1, h * w, 2)`` x, y of the pixels in ``rows`` and ``columns`` of a crop, row by row: the
    points :func:`inside_polygon` tests to rasterise a contour."""
    ys, xs = torch.meshgrid(torch.arange(rows.start, rows.stop, device=device).float(),
                            torch.arange(columns.start, columns.stop, device=device).float(), indexing="ij")
    return torch.stack([xs, ys], -1).reshape(1, -1, 2)


def polygon_mask(landmarks: Tensor, contour: Sequence[int], size: int) -> Tensor:
    """``(N, 1, size, size)``: 1.0 where a pixel's centre lies inside the polygon ``contour`` of each
    face's ``(N, 468, 2+)`` landmarks, given in that ``size``-pixel crop's pixels."""
    whole = slice(0, size)
    inside = inside_polygon(pixel_centres(whole, whole, landmarks.device), landmarks, contour)
    return inside.reshape(-1, 1, size, size).float()


def load_triangles(weights: Path | str = WEIGHTS) -> Tensor:
    """The mesh's ``(T, 3)`` triangles (MediaPipe's tessellation), for drawing and piecewise warps."""
    return torch.load(Path(weights), map_location="cpu", weights_only=True)["triangles"].long()


def crop_template() -> Template:
    """Where the five points go in the 192-pixel crop the mesh reads: exaug's GAN template zoomed
    out by 10%. On the shared people photos this put the mesh's eyes, nose tip and mouth corners
    within 2-6% of the inter-ocular distance of MTCNN's (median), a little closer than the tight
    GAN crop itself, and every face scored above 0.99."""
    points = get_template("exaug", INPUT_SIZE).points
    centre = (INPUT_SIZE - 1) / 2
    return Template("mesh", INPUT_SIZE, (points - centre) * 0.9 + centre)


class MeshFitter:
    """Meshes of detected faces in their source images: each face is cut out at 192 pixels around
    its five points, meshed, and its landmarks mapped back through the crop's similarity transform
    (z scaled like x and y), so meshes sit in source pixels like MTCNN's landmarks."""

    def __init__(self, mesh: FaceMesh | None = None, device: str | torch.device = "auto", batch_size: int = 64):
        self.aligner = FaceAligner(crop_template(), device=device)
        self.mesh = (mesh or FaceMesh()).to(self.aligner.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def fit(self, images: Sequence[np.ndarray | Tensor], faces: Sequence[ImageFaces]) -> MeshResult:
        """Every face of every image, in the aligner's order (image by image, most probable first)."""
        crops = self.aligner.align(images, faces)
        if len(crops) == 0:
            return MeshResult(torch.zeros((0, NUM_POINTS, 3)), torch.zeros(0))
        results = [self.mesh(crops.images[start:start + self.batch_size])
                   for start in range(0, len(crops), self.batch_size)]
        landmarks = torch.cat([result.landmarks for result in results])
        scores = torch.cat([result.scores for result in results])
        return MeshResult(to_source(landmarks, crops.transforms), scores.cpu())


def to_source(landmarks: Tensor, transforms: Tensor) -> Tensor:
    """``(n, 468, 3)`` crop-pixel meshes through the inverse of ``(n, 2, 3)`` source->crop transforms."""
    to_source_matrix = invert_affine(transforms)
    xy = apply_affine(to_source_matrix, landmarks[..., :2])
    scale = torch.linalg.det(to_source_matrix[:, :, :2]).abs().sqrt()[:, None, None]
    return torch.cat([xy, landmarks[..., 2:] * scale], -1).cpu()
