"""A dense warp of a face from the motion of its mesh points (thin-plate spline), at any resolution.

The geometry model says where each of the 468 mesh points should go; the face's own pixels follow
them. A thin-plate spline through the point pairs is the smoothest map that moves every point
exactly where it should (it bends skin the way a rubber sheet would, and is the classic choice for
landmark-driven face warps). Points on the crop's border stay put, so hair, background and
everything beyond the face do not move.

The field is resolution-free: it is solved once in normalised coordinates of the aligned face and
evaluated on a coarse grid (it is smooth: 32 x 32, a node every 4 pixels of a 128-pixel face,
warps CK+ mouths the way 64 x 64 does to the eye at a quarter of the cost), then upsampled to
whatever pixels it is applied to, so a 400-pixel face in a video frame is warped at 400 pixels
instead of being redrawn at the model's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FIELD_SIZE = 32  # grid the spline is evaluated on before upsampling
BORDER_ANCHORS = 9  # fixed points per side of the crop
STILL_BELOW = (0.15, 0.5)  # output pixels: moves shorter than the first stay put, ramping to the second
# Faces evaluated together on the grid. Their (n, 1024, 289) kernel is fresh memory each time, and
# once it outgrows the cache, filling it costs more than the arithmetic: on the 2-core Xeon 16 faces
# (19 MB) took 0.9 instead of 0.5 ms a face at 8; on the 2-core AMD EPYC 8 faces (9.5 MB) took 3.1-3.4
# ms a face, 2 (2.4 MB) 1.75-1.83, 1 and 4 within 0.2 of that.
_CHUNK = 2


def control_points() -> list[int]:
    """The mesh points the spline goes through: every named contour (lips, eyes, brows, nose, face
    outline) and every third point between them. A third of the mesh bends the face the same way
    (the rest lie on smooth skin between these) at a twentieth of the cost of solving for all 468."""
    from exaug.faces.mesh import GROUPS, NUM_POINTS

    named = {index for group in GROUPS.values() for index in group}
    return sorted(named | set(range(0, NUM_POINTS, 3)))


def _kernel(a: Tensor, b: Tensor) -> Tensor:
    """Thin-plate radial basis r^2 log r^2 between ``(n, p, 2)`` and ``(n, q, 2)`` points.

    The squared distances come out of one batched product, |a|^2 + |b|^2 - 2 a.b, written as rows
    (|a|^2, 1, -2a) times columns (1, |b|^2, b): ``torch.cdist`` computes the same sum, then a square
    root this would square again: two passes over the (n, p, q) buffer, the field's largest, that
    were a third of the kernel's time."""
    left = torch.cat([a.square().sum(-1, keepdim=True), torch.ones_like(a[..., :1]), a * -2], -1)
    right = torch.cat([torch.ones_like(b[..., :1]), b.square().sum(-1, keepdim=True), b], -1)
    squared = torch.bmm(left, right.transpose(1, 2)).clamp_min_(1e-12)  # rounding can dip below zero
    return squared.log().mul_(squared)


def _border(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    steps = torch.linspace(0.0, 1.0, BORDER_ANCHORS, device=device, dtype=dtype)
    inner = steps[1:-1]
    zeros, ones = torch.zeros_like(steps), torch.ones_like(steps)
    ring = torch.cat([torch.stack([steps, zeros], 1), torch.stack([steps, ones], 1),
                      torch.stack([zeros[1:-1], inner], 1), torch.stack([ones[1:-1], inner], 1)])
    return ring.expand(n, -1, -1)


def backward_field(source: Tensor, target: Tensor, size: int = FIELD_SIZE, smoothing: float = 1e-4) -> Tensor:
    """For output pixels of a face whose points move ``source -> target`` (``(n, k, 2)``, k mesh points or
    the :func:`control_points` of them; coordinates as
    fractions of the crop side, 0 and 1 at its outer edges), where to sample the input: ``(n, size,
    size, 2)`` in the same units. ``smoothing`` lets the spline pass near rather than through points
    that nearly coincide (eyelids closing)."""
    if source.shape[0] > _CHUNK:
        return torch.cat([backward_field(source[i:i + _CHUNK], target[i:i + _CHUNK], size, smoothing)
                          for i in range(0, source.shape[0], _CHUNK)])
    n, dtype = source.shape[0], torch.float64
    anchors = _border(n, source.device, dtype)
    controls = torch.cat([target.to(dtype), anchors], 1)  # where points end up: the spline's knots
    values = torch.cat([source.to(dtype), anchors], 1)  # where to sample for them
    count = controls.shape[1]
    ones = torch.ones(n, count, 1, device=source.device, dtype=dtype)
    affine = torch.cat([ones, controls], 2)  # (n, count, 3)
    system = torch.zeros(n, count + 3, count + 3, device=source.device, dtype=dtype)
    system[:, :count, :count] = _kernel(controls, controls) + smoothing * torch.eye(count, device=source.device, dtype=dtype)
    system[:, :count, count:] = affine
    system[:, count:, :count] = affine.transpose(1, 2)
    rhs = torch.cat([values, torch.zeros(n, 3, 2, device=source.device, dtype=dtype)], 1)
    # One face at a time: MKL's batched LU has failed here on some batches ("DLASWP parameter 6")
    # and then crawled for minutes; single solves of this size take a millisecond or two.
    weights = torch.stack([torch.linalg.solve(matrix, right) for matrix, right in zip(system, rhs)]).float()
    # The grid is evaluated in single precision: the solve needs double, the sum of ~300 terms does not.
    pixels = identity_field(1, size, source.device).reshape(1, -1, 2).expand(n, -1, -1)
    controls = controls.float()
    field = _kernel(pixels, controls) @ weights[:, :count] + weights[:, count:count + 1] + pixels @ weights[:, count + 1:]
    return field.reshape(n, size, size, 2).to(source.dtype)


def mesh_field(source_mesh: Tensor, target_mesh: Tensor, size: int) -> Tensor:
    """:func:`backward_field` for a face whose mesh points, in pixels of its ``size``-pixel crop,
    move ``source_mesh -> target_mesh`` (``(n, 468, 2+)``), through the :func:`control_points`."""
    points = control_points()
    return backward_field((source_mesh[:, points, :2] + 0.5) / size, (target_mesh[:, points, :2] + 0.5) / size)


def warp(images: Tensor, field: Tensor, mode: str = "bicubic") -> Tensor:
    """``(n, C, H, W)`` images resampled through a backward ``field`` (from :func:`backward_field`),
    upsampled to the images' own resolution first. Bicubic keeps more of the skin's detail than
    bilinear (a bilinear warp loses about a fifth of the Laplacian energy at 128 px)."""
    n, height, width = len(images), *images.shape[-2:]
    size = field.shape[1]
    # Upsample the displacement, not the positions: bilinear upsampling clamps at the borders, which
    # would shift the outermost pixels of even a still face; a displacement of zero stays zero.
    motion = (field - identity_field(n, size, field.device)).permute(0, 3, 1, 2)
    if motion.shape[-2:] != (height, width):
        motion = F.interpolate(motion, size=(height, width), mode="bilinear", align_corners=False)
    motion = _still_below(motion.permute(0, 2, 3, 1), height, width)
    grid = identity_field(n, height, field.device, width) + motion
    grid = grid * 2 - 1  # fractions of the side -> grid_sample's [-1, 1], align_corners=False
    warped = F.grid_sample(images.float(), grid.float(), mode=mode, padding_mode="border", align_corners=False)
    return warped


def _still_below(motion: Tensor, height: int, width: int, low: float = STILL_BELOW[0], high: float = STILL_BELOW[1]) -> Tensor:
    """``motion`` (n, H, W, 2) with moves of under ``low`` output pixels set to zero, ramping up to the
    full move at ``high``. Every resampling at a fractional offset softens detail, and the spline
    drifts hair, background and the far cheek by a few tenths of a pixel: left where they are they
    keep every pixel of their texture, and no one can see a tenth of a pixel's displacement."""
    pixels = motion * torch.tensor([width, height], device=motion.device, dtype=motion.dtype)
    length = pixels.norm(dim=-1, keepdim=True)
    return motion * ((length - low) / (high - low)).clamp(0, 1)


def identity_field(n: int, size: int = FIELD_SIZE, device: torch.device | str = "cpu", width: int | None = None) -> Tensor:
    """The field that samples every pixel where it is: ``(n, size, width or size, 2)`` pixel centres."""
    rows = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    columns = (torch.arange(width or size, device=device, dtype=torch.float32) + 0.5) / (width or size)
    grid_y, grid_x = torch.meshgrid(rows, columns, indexing="ij")
    return torch.stack([grid_x, grid_y], -1).expand(n, -1, -1, -1).clone()
