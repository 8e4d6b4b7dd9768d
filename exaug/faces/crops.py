"""Where the face follower (:mod:`exaug.faces.follow`) looks, in frame pixels: the crop the face mesh
reads around a face it follows, the square MTCNN searches for one the mesh lost, the faces found
in such squares mapped back into the frame, and a mesh moved onto a detection's five points (for a
face the mesh cannot fit). Geometry only: which face to look for, and when, is the follower's."""

from __future__ import annotations

import math

import numpy as np
import torch

from exaug.faces.align import apply_affine, estimate_similarity
from exaug.faces.detect import ImageFaces
from exaug.faces.mesh import INPUT_SIZE, five_points
from exaug.faces.track import box_iou

EYE_CORNERS = (33, 263)  # outer eye corners (image left, image right): the crop's roll
MIN_CROP = 12  # pixels: the smallest square MTCNN's first network reads; a lost face's smaller one is off the frame
Region = tuple[int, int, int, int]  # x0, y0, x1, y1 of a crop, in frame pixels


def mesh_box(mesh: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) of a mesh's points (the face from brow to chin, ear to ear)."""
    xy = mesh[..., :2]
    return np.concatenate([xy.min(-2), xy.max(-2)], -1)


def crop_transforms(meshes: torch.Tensor, scale: float, size: int = INPUT_SIZE) -> torch.Tensor:
    """(n, 2, 3) source->crop similarities for the mesh: its bounding box enlarged ``scale`` times,
    centred, turned so the eyes are level (the crop MediaPipe tracks with)."""
    xy = meshes[..., :2].double()
    low, high = xy.amin(1), xy.amax(1)
    centre, side = (low + high) / 2, (high - low).amax(1) * scale
    eyes = xy[:, EYE_CORNERS[1]] - xy[:, EYE_CORNERS[0]]
    angle = -torch.atan2(eyes[:, 1], eyes[:, 0])
    zoom = size / side.clamp_min(1.0)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shift = (size - 1) / 2 - (linear @ centre[..., None])[..., 0]
    return torch.cat([linear, shift[..., None]], -1).float()


def moved_onto(mesh: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``mesh`` moved by the similarity that best takes its five points onto ``points``."""
    source = five_points(torch.from_numpy(mesh[None, :, :2]).double())
    transform = estimate_similarity(source, torch.from_numpy(points).double()).double()
    moved = apply_affine(transform, torch.from_numpy(mesh[None, :, :2]).double())[0].numpy()
    return np.concatenate([moved, mesh[:, 2:] * math.sqrt(abs(float(torch.det(transform[0, :, :2]))))], 1)


def search_square(mesh: np.ndarray, height: int, width: int) -> Region | None:
    """Where to look for a face the mesh lost: a square twice its size around its last ``mesh``, cut
    to a ``height`` x ``width`` frame; None where too little of it is left inside the frame."""
    x0, y0, x1, y1 = mesh_box(mesh)
    side, cx, cy = max(x1 - x0, y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2
    region = (max(0, int(cx - side)), max(0, int(cy - side)),
              min(width, math.ceil(cx + side)), min(height, math.ceil(cy + side)))
    return region if min(region[2] - region[0], region[3] - region[1]) >= MIN_CROP else None


def faces_in_frame(crops: list[ImageFaces], regions: list[Region]) -> ImageFaces:
    """The faces MTCNN found in crops of a frame, in frame pixels, most probable first; a face found
    in two overlapping crops counts once."""
    offsets = [np.float32([x0, y0]) for x0, y0, _, _ in regions]
    boxes = np.concatenate([faces.boxes + np.tile(offset, 2) for faces, offset in zip(crops, offsets)])
    probs = np.concatenate([faces.probs for faces in crops])
    landmarks = np.concatenate([faces.landmarks + offset for faces, offset in zip(crops, offsets)])
    order = np.argsort(-probs, kind="stable")
    kept: list[int] = []
    for index in order.tolist():
        if not kept or box_iou(boxes[index][None], boxes[kept]).max() < 0.5:
            kept.append(index)
    return ImageFaces(boxes[kept].reshape(-1, 4), probs[kept], landmarks[kept].reshape(-1, 5, 2))
