"""Align faces onto a 5-point template with a similarity transform, and warp them back.

A similarity (rotation, uniform scale, translation) keeps the face's proportions, so a smile is not
squashed into a different expression; least squares over the five landmarks spreads detection noise
over all of them. Every face keeps its transform (source pixel -> aligned pixel) so the video
pipeline can paste an edited face back exactly where it came from.

Coordinates are pixel-index coordinates (pixel ``i`` is centred on ``i``), as MTCNN and OpenCV use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from exaug.device import resolve_device
from exaug.errors import ExaugError
from exaug.faces.detect import ImageFaces

# Landmarks of the ArcFace/InsightFace 112x112 crop, the de-facto input of face-recognition training.
_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# exaug's GAN crop: the ArcFace points pulled towards the centre so forehead, chin and cheeks (where
# expressions show) are inside the square. Values are fractions of the side.
_EXAUG_UNIT = np.array(
    [[0.3450, 0.4050], [0.6550, 0.4050], [0.5000, 0.5650], [0.3700, 0.7200], [0.6300, 0.7200]],
    dtype=np.float64,
)
_TEMPLATES = {"exaug": (_EXAUG_UNIT, 128), "arcface": ((_ARCFACE_112 + 0.5) / 112.0, 112)}
TEMPLATE_NAMES = tuple(_TEMPLATES)


@dataclass(frozen=True)
class Template:
    """Where the five landmarks go in an aligned ``size`` x ``size`` face."""

    name: str
    size: int
    points: np.ndarray  # (5, 2) float64, pixel-index coordinates at ``size``


# Pixels a side an aligned face may be given (align's and augment's --size): outside them a size is
# a typo, and 100000 asked a batch's crops for terabytes.
FACE_SIZES = (16, 4096)


def check_face_size(size: int | None) -> None:
    """An ExaugError unless ``size`` (None: the template's or the model's) is within :data:`FACE_SIZES`."""
    if size is not None and not FACE_SIZES[0] <= size <= FACE_SIZES[1]:
        raise ExaugError(f"--size {size}: aligned faces are {FACE_SIZES[0]} to {FACE_SIZES[1]} pixels a side")


def get_template(name: str = "exaug", size: int | None = None) -> Template:
    """The named template scaled to ``size`` (default: 128 for exaug, 112 for arcface)."""
    if name not in _TEMPLATES:
        raise ValueError(f"unknown template {name!r}: use one of {', '.join(TEMPLATE_NAMES)}")
    unit, default_size = _TEMPLATES[name]
    size = size or default_size
    return Template(name, size, unit * size - 0.5)


def estimate_similarity(points: torch.Tensor, template: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Least-squares similarity transforms mapping each ``(5,2)`` (or ``(k,2)``) landmark set onto
    ``template``: one ``(k,2)`` set for all, or one per landmark set ``(n,k,2)``.

    Closed form (no reflection): for centred points s and d, a = sum(s.d)/|s|^2 and
    b = sum(s x d)/|s|^2 give the rotation-scale [[a, -b], [b, a]]. Returns ``(n, 2, 3)`` in ``dtype``.
    """
    points = points.to(torch.float64)
    template = template.to(points)
    src_mean, dst_mean = points.mean(1, keepdim=True), template.mean(-2)
    s, d = points - src_mean, template - dst_mean[..., None, :]
    norm = (s**2).sum((1, 2)).clamp_min(1e-12)
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(-1) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(-1) / norm
    rotation = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)
    shift = dst_mean - (rotation @ src_mean.transpose(1, 2)).squeeze(-1)
    return torch.cat([rotation, shift[..., None]], -1).to(dtype)


def invert_affine(transforms: torch.Tensor) -> torch.Tensor:
    """Inverse of ``(n, 2, 3)`` affine transforms, in closed form: a video inverts a few per face and
    frame, and ``torch.linalg.inv`` on 2 x 2 matrices costs ten times as much."""
    t = transforms.double()
    (a, b), (c, d) = t[..., 0, :2].unbind(-1), t[..., 1, :2].unbind(-1)
    det = a * d - b * c
    linear_inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]
    shift = -(linear_inv @ t[..., 2:])
    return torch.cat([linear_inv, shift], -1).to(transforms.dtype)


def apply_affine(transforms: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map ``(n, k, 2)`` points through ``(n, 2, 3)`` transforms."""
    return points @ transforms[..., :2].transpose(1, 2) + transforms[..., 2][:, None, :]


def _square_corners(size: int, device: torch.device) -> torch.Tensor:
    """The outer pixel edges of an aligned face, ``(1, 4, 2)``: its footprint in the source is their image."""
    return torch.tensor([[[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]]], device=device)


def sampling_grid(transforms: torch.Tensor, height: int, width: int, source_size: tuple[int, int],
                  origin: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """``grid_sample``'s grid ``(n, height, width, 2)`` (align_corners=False) for output pixels
    ``origin + (column, row)`` mapped into a ``source_size`` (width, height) image by ``(n, 2, 3)``
    ``transforms`` (output pixel -> source pixel).

    The pixel-to-[-1, 1] scaling is folded into the transform, and a grid's rows and columns are
    separable, so each coordinate is one broadcast sum of a column term and a row term instead of a
    matrix product over every pixel (which cost more than the bilinear sampling it fed)."""
    source_width, source_height = source_size
    scale = transforms.new_tensor([2.0 / source_width, 2.0 / source_height])
    matrix = transforms * scale[:, None]
    matrix[..., 2] += scale / 2 - 1  # pixel centres: (x + 0.5) * 2 / W - 1
    columns = torch.arange(width, device=transforms.device, dtype=transforms.dtype) + origin[0]
    rows = torch.arange(height, device=transforms.device, dtype=transforms.dtype) + origin[1]
    along_rows = matrix[..., 1:2] * rows + matrix[..., 2:3]  # (n, 2, height)
    grid = matrix[..., 0:1, None] * columns + along_rows[..., None]  # (n, 2, height, width)
    return grid.permute(0, 2, 3, 1).contiguous()


def crop_grid(transform: torch.Tensor, size: int, source_size: int) -> torch.Tensor:
    """``grid_sample``'s grid ``(1, size, size, 2)`` that cuts a ``size``-pixel crop out of square
    ``source_size``-pixel images through one ``(1, 2, 3)`` source->crop ``transform``: built once,
    then one bilinear ``grid_sample`` per batch, differentiable in the images (training reads the
    mesh of its outputs through it). Upsampling crops only: unlike :func:`warp_faces`, it does not
    box-filter a larger footprint."""
    return sampling_grid(invert_affine(transform.double()), size, size, (source_size, source_size)).float()


def warp_faces(image: torch.Tensor, transforms: torch.Tensor, size: int) -> torch.Tensor:
    """Aligned ``(n, C, size, size)`` float faces from one ``(C, H, W)`` float image.

    Two steps keep small faces sharp and large ones free of aliasing: ``roi_align`` box-filters
    each face's footprint into a crop at twice the output resolution (all faces of the image in
    one call), then ``grid_sample`` applies the rotation from that crop.
    """
    n = transforms.shape[0]
    if n == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    to_source = invert_affine(transforms)
    footprint = apply_affine(to_source, _square_corners(size, image.device).expand(n, 4, 2))
    low, high = footprint.amin(1), footprint.amax(1)  # (n, 2): x0, y0 / x1, y1 (pixel edges)
    crop = 2 * size
    boxes = torch.cat([torch.zeros(n, 1, device=image.device), low + 0.5, high + 0.5], 1)
    crops = roi_align(image[None], boxes, output_size=crop, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    step = (high - low) / crop  # source pixels per crop pixel, per axis
    # crop pixel u spans low + [u, u+1) * step: aligned pixel -> source pixel -> crop pixel
    to_crop = torch.cat([to_source[..., :2] / step[..., None], ((to_source[..., 2] - low) / step - 0.5)[..., None]], -1)
    grid = sampling_grid(to_crop, size, size, (crop, crop))
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_regions(frame: torch.Tensor, transforms: torch.Tensor, size: int, padding: str = "zeros") -> torch.Tensor:
    """Aligned ``(n, 3, size, size)`` float faces from one ``(H, W, 3)`` uint8 frame, each warped from
    its own footprint only: converting a whole 1080p frame to float costs more than the faces in it.
    Beyond the frame's edges a face is black (``padding="zeros"``, what the face mesh was measured
    with) or the edge's pixels go on (``"replicate"``: for faces to edit, whose warp would pull black
    into the frame as a dark band along the edge).

    A face kept at its size or enlarged is sampled once, bicubic: :func:`warp_faces`' box filter
    then bilinear step, there to stop a reduced face aliasing, halves a full-size face's fine detail
    (Laplacian energy), and pasting it back costs as much again. Reduced faces go through it."""
    height, width = frame.shape[:2]
    if len(transforms) == 0:
        return torch.zeros((0, 3, size, size), device=frame.device)
    to_source = invert_affine(transforms)
    footprints = apply_affine(to_source, _square_corners(size, transforms.device).expand(len(transforms), 4, 2))
    scales = torch.linalg.det(transforms[:, :, :2].double()).abs().sqrt().tolist()
    crops = []
    for transform, footprint, scale in zip(transforms, footprints, scales):
        # two pixels of margin: bicubic sampling at the footprint's edge reads its neighbours
        x0, y0 = (int(v) - 2 for v in footprint.amin(0).tolist())
        x1, y1 = (int(v) + 3 for v in footprint.amax(0).tolist())
        inside_x0, inside_y0 = min(max(0, x0), width - 1), min(max(0, y0), height - 1)
        inside_x1, inside_y1 = max(min(x1, width), inside_x0 + 1), max(min(y1, height), inside_y0 + 1)
        region = frame[inside_y0:inside_y1, inside_x0:inside_x1].permute(2, 0, 1).float()
        pads = ((max(inside_x0 - x0, 0), max(x1 - inside_x1, 0), max(inside_y0 - y0, 0), max(y1 - inside_y1, 0))
                if padding == "replicate" else (0, 0, 0, 0))
        if any(pads):
            region = F.pad(region, pads, mode="replicate")
        x0, y0 = inside_x0 - pads[0], inside_y0 - pads[2]
        shifted = transform.clone()
        shifted[:, 2] += transform[:, :2] @ torch.tensor([float(x0), float(y0)], device=transform.device)
        if scale < 1:
            crops.append(warp_faces(region, shifted[None], size))
            continue
        grid = sampling_grid(invert_affine(shifted[None]), size, size, (region.shape[-1], region.shape[-2]))
        crops.append(F.grid_sample(region[None], grid, mode="bicubic", padding_mode="zeros", align_corners=False))
    return torch.cat(crops)


def resize_faces(faces: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, C, H, W)`` uint8 faces at ``size`` x ``size``, antialiased: the one resize that training,
    evaluation and augment share, so a face is scaled the same way wherever it is used."""
    if tuple(faces.shape[-2:]) == (size, size):
        return faces
    resized = F.interpolate(faces.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class Patch:
    """An aligned face warped back into its source image: ``pixels`` cover rows top.. and cols left..."""

    pixels: torch.Tensor  # (C, h, w)
    top: int
    left: int


def unwarp_faces(faces: torch.Tensor, transforms: torch.Tensor, image_size: tuple[int, int],
                 mode: str = "bilinear") -> list[Patch]:
    """Warp aligned ``(n, C, S, S)`` faces back into the source frame (the inverse of warp_faces).

    Each face comes back as a patch over the bounding box of its footprint, clipped to the image;
    any extra channel (a blending mask, say) is warped with the same sampling (``mode``, as
    ``grid_sample`` takes it: bicubic keeps more detail and may overshoot).
    """
    height, width = image_size
    size = faces.shape[-1]
    to_source = invert_affine(transforms)
    edges = _square_corners(size, faces.device)
    patches = []
    for face, forward, backward in zip(faces, transforms, to_source):
        corners = apply_affine(backward[None], edges)[0]
        left, top = (int(max(0, np.floor(v))) for v in corners.amin(0).tolist())
        right = int(min(width, np.ceil(corners[:, 0].max().item()) + 1))
        bottom = int(min(height, np.ceil(corners[:, 1].max().item()) + 1))
        if right <= left or bottom <= top:
            continue
        grid = sampling_grid(forward[None], bottom - top, right - left, (size, size), (left, top))
        warped = F.grid_sample(face[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
        patches.append(Patch(warped[0], top, left))
    return patches


@dataclass
class AlignedFaces:
    """Aligned faces of a batch of images, with what is needed to trace each back to its source."""

    images: torch.Tensor  # (n, 3, S, S) uint8 RGB, on the aligner's device
    transforms: torch.Tensor  # (n, 2, 3) float32: source pixel -> aligned pixel
    image_index: np.ndarray  # (n,) which input image each face came from
    face_index: np.ndarray  # (n,) which face of that image (0 = most probable)

    def __len__(self) -> int:
        return self.images.shape[0]


class FaceAligner:
    """Warps detected faces onto a template on one device, every face of an image in one call."""

    def __init__(self, template: Template | str = "exaug", size: int | None = None, device: str | torch.device = "auto"):
        self.template = get_template(template, size) if isinstance(template, str) else template
        self.device = resolve_device(device)
        self._points = torch.from_numpy(self.template.points).to(self.device)

    @property
    def size(self) -> int:
        return self.template.size

    def transforms_for(self, landmarks: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(n, 2, 3)`` transforms taking ``(n, 5, 2)`` landmarks onto the template."""
        return estimate_similarity(torch.as_tensor(landmarks, device=self.device), self._points)

    def align(self, images: Sequence[np.ndarray | torch.Tensor], faces: Sequence[ImageFaces]) -> AlignedFaces:
        """Align every detected face of every ``HxWx3 uint8`` image."""
        crops, transforms, image_index, face_index = [], [], [], []
        for number, (image, found) in enumerate(zip(images, faces)):
            if len(found) == 0:
                continue
            pixels = torch.as_tensor(image).to(self.device, non_blocking=True).permute(2, 0, 1).float()
            matrices = self.transforms_for(found.landmarks)
            crops.append(warp_faces(pixels, matrices, self.size).round_().clamp_(0, 255).to(torch.uint8))
            transforms.append(matrices)
            image_index += [number] * len(found)
            face_index += range(len(found))
        if not crops:
            return AlignedFaces(
                torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8, device=self.device),
                torch.zeros((0, 2, 3), device=self.device), np.zeros(0, np.int64), np.zeros(0, np.int64),
            )
        return AlignedFaces(torch.cat(crops), torch.cat(transforms), np.array(image_index), np.array(face_index))
