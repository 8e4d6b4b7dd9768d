"""Where on an aligned face, and how much, each layer of the geometry-guided generator may act.

All of it is read from the face mesh (:mod:`exaug.faces.mesh`), in the crop's pixels: the face's
outline (the shader's extent), the soft ellipse around the mouth (the painter's), the gate that
keeps closed mouths unpainted, the fade for turned and tilted faces, the lips' band and colour for
a closing smile, and the new opening of a mouth that drops open (the painter's alone).
:mod:`exaug.model.guided` composes the layers with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from exaug.faces.mesh import (FACE_OVAL, LIPS_INNER, LIPS_OUTER, head_pitch, head_turn, inside_polygon, mouth_opening,
                              pixel_centres, polygon_mask)


def face_outline(mesh: Tensor, size: int) -> Tensor:
    """(N, 1, size, size) in [0, 1]: inside each face's outline (FACE_OVAL of ``mesh``, given in a
    ``size``-pixel crop's pixels), feathered by a pixel, so shading stops at the face and leaves hair
    and background as they are."""
    return F.avg_pool2d(polygon_mask(mesh, FACE_OVAL, size), 3, 1, 1, count_include_pad=False)


# Mouth openings (:func:`~exaug.faces.mesh.mouth_opening`) between which the painter fades in: under
# the first a mouth is closed (CK+'s neutral frames: 90% under 0.05), over the second it is open
# (CK+ smiles: 90% over 0.12).
MOUTH_CLOSED, MOUTH_OPEN = 0.06, 0.10


def paint_gate(source_mesh: Tensor, target_mesh: Tensor) -> Tensor:
    """How much the painter may act on each face, (N,) in [0, 1]: 0 when the mouth is closed before
    and after, rising smoothly to 1 as either opens (teeth to show, or to cover). A closed mouth only
    moves, and the warp renders it with its own detail: painting it anyway softened the lip line
    (held-out CK+ sharpness 0.84 -> 0.89 without it, judged rates unchanged), and a face the gate
    closes skips the painter altogether."""
    openness = torch.maximum(mouth_opening(source_mesh), mouth_opening(target_mesh)).float()
    return _smoothstep((openness - MOUTH_CLOSED) / (MOUTH_OPEN - MOUTH_CLOSED))


# Head turns (:func:`~exaug.faces.mesh.head_turn`) over which an edit fades out: up to the first a face
# gets all of its motion, from the second none. On the MJPEG clip's faces, three-quarter views up to
# about 0.5 smiled cleanly; from about 0.6 the far cheek and the mouth smeared, and profiles (0.85
# and more) came out as ghosted mouths: the spline folded the face over itself.
TURNED, PROFILE = 0.45, 0.75
# Head pitches (:func:`~exaug.faces.mesh.head_pitch`): CK+'s median, and how far from it an edit
# starts and ends fading out (about 10 and 18 degrees). CK+ faces lie within 0.12 of it (99%); on
# the shared clip's faces, tilts down to 0.24 smiled cleanly, while a boy looking down steeply
# (0.34-0.44) got a dark smudge between nose and mouth from the shader and a smeared mouth.
LEVEL, TILTED, STEEP = 0.13, 0.12, 0.22


def facing(source_mesh: Tensor) -> Tensor:
    """How much of its motion each face gets, (N,) in [0, 1]: 1 facing the camera, falling smoothly
    to 0 in profile or tilted steeply up or down, where the face is left as it is. The geometry
    model, the spline, the shader and the painter know frontal CK+ faces; on a face turned away the
    motion of its hidden side folds the warp over the visible one (on the MJPEG clip, 56 of 398
    faces, 53 of them turned 0.45 or more)."""
    turned = _smoothstep((head_turn(source_mesh) - TURNED) / (PROFILE - TURNED))
    tilted = _smoothstep(((head_pitch(source_mesh) - LEVEL).abs() - TILTED) / (STEEP - TILTED))
    return (1 - turned) * (1 - tilted)


def _smoothstep(t: Tensor) -> Tensor:
    t = t.clamp(0, 1)
    return t * t * (3 - 2 * t)


def paint_region(mesh: Tensor, size: int) -> Tensor:
    """Where new texture may appear: a soft ellipse around the mouth (teeth, its inside, the folds
    beside it). Everywhere else the warp alone renders the face, which keeps skin, eyes, hair and
    background exactly the person's own and stops the painter, trained on CK+'s greyscale studio
    faces, from smudging faces unlike them (painted eyes and brows came out grey on colour photos)."""
    centres = torch.arange(size, device=mesh.device, dtype=torch.float32)
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    points = mesh[:, list(LIPS_OUTER), :2].float()
    low, high = points.amin(1), points.amax(1)
    centre, radius = (low + high) / 2, ((high - low) / 2 * 1.35).clamp_min(2.0)  # the lips' box, grown 35%
    distance = (((grid_x - centre[:, None, None, 0]) / radius[:, None, None, 0]) ** 2
                + ((grid_y - centre[:, None, None, 1]) / radius[:, None, None, 1]) ** 2).sqrt()
    return ((1.25 - distance).clamp(0, 0.25) * 4)[:, None]


def squeezed_teeth(source_mesh: Tensor, target_mesh: Tensor, field: Tensor, size: int, rows: slice,
                   columns: slice) -> Tensor:
    """(N, 1, h, w) over ``rows`` and ``columns`` of a ``size``-pixel face (the meshes' pixels): 1
    where the warp fetches pixels from inside the source's lips but puts them outside the target's
    (its lips' opening). Closing a mouth that shows its teeth, the spline, evaluated on a 32 x 32
    grid, cannot squeeze them into the closed lips' gap: they stay a band a few pixels high between
    the lips, where the painter paints only partly."""
    grid = F.interpolate(field.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
    grid = grid[..., rows, columns].permute(0, 2, 3, 1)
    n, height, width = grid.shape[:3]
    fetched = inside_polygon(grid.reshape(n, -1, 2) * size - 0.5, source_mesh, LIPS_INNER)
    opening = inside_polygon(pixel_centres(rows, columns, grid.device), target_mesh, LIPS_INNER)
    return (fetched & ~opening).reshape(n, 1, height, width).float()


# Mouth openings (the target's) over which the painter takes over a gaping mouth's new opening
# (:func:`stretched_lips`): smiles at intensity 1 open to 0.13-0.22 (on photos and CK+ faces alike),
# surprise to 0.27-0.37.
GAPING, AGAPE = 0.22, 0.3


def stretched_lips(source_mesh: Tensor, target_mesh: Tensor, size: int, rows: slice, columns: slice) -> Tensor:
    """(N, 1, h, w) in [0, 1] over ``rows`` and ``columns`` of a ``size``-pixel face (the meshes'
    pixels): the opening of a mouth that gapes (past :data:`GAPING`, fully from :data:`AGAPE`) by as
    much as it is new (1 for a mouth that was closed, 0 for one as open before). The warp fills a new
    opening with the closed lips stretched across it: on colour photos, a mouth dropping open came
    out as red lips smeared over it (the painter, trained on greyscale CK+, barely painted there),
    and only the painter can render the inside of a mouth. Smiles keep the warp: painted in full,
    their teeth came out as a black and white grid."""
    target_gap, source_gap = mouth_opening(target_mesh).float(), mouth_opening(source_mesh).float()
    new = (1 - source_gap / target_gap.clamp_min(1e-6)).clamp(0, 1)  # how much of the opening is new
    weight = _smoothstep((target_gap - GAPING) / (AGAPE - GAPING)) * new
    stretched = torch.zeros(len(target_mesh), 1, rows.stop - rows.start, columns.stop - columns.start,
                            device=target_mesh.device)
    if (gaping := (weight > 0).nonzero()[:, 0]).numel():  # most targets do not gape: no polygon to test them
        opening = inside_polygon(pixel_centres(rows, columns, target_mesh.device), target_mesh[gaping], LIPS_INNER)
        opening = opening.reshape(-1, 1, *stretched.shape[-2:]).float()
        stretched[gaping] = F.avg_pool2d(opening, 3, 1, 1, count_include_pad=False) * weight[gaping, None, None, None]
    return stretched


def lip_colour(faces: Tensor, meshes: Tensor, rows: slice, columns: slice) -> Tensor:
    """(N, C) mean of ``faces`` (N, C, S, S) over each face's lips (between the outer and inner lip
    contours of ``meshes``, in the faces' pixels), looked for within ``rows`` and ``columns``."""
    centres = pixel_centres(rows, columns, faces.device)
    lips = (inside_polygon(centres, meshes, LIPS_OUTER) & ~inside_polygon(centres, meshes, LIPS_INNER)).float()
    values = faces[..., rows, columns].flatten(2)
    return (values * lips[:, None]).sum(-1) / lips.sum(-1, keepdim=True).clamp_min(1)


def lips_box(meshes: Tensor, size: int, margin: int = 2) -> tuple[slice, slice]:
    """Rows and columns of a ``size``-pixel face holding every face's outer lips, ``margin`` pixels
    to spare: where the lip tests need to look (a twentieth of the face; polygon tests cost per pixel)."""
    points = meshes[:, list(LIPS_OUTER), :2]
    low = (points.amin((0, 1)).floor().long() - margin).clamp(0, size - 1).tolist()
    high = (points.amax((0, 1)).ceil().long() + margin + 1).clamp(1, size).tolist()
    return slice(low[1], high[1]), slice(low[0], high[0])
