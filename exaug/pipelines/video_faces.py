"""The tracked faces of a video chunk, edited at the size they have in the frame and pasted back.

Rendered at the model's 128 pixels and pasted back, a 400-pixel face is a blurred upscale. The
geometry-guided generator's warp is resolution-free (only its painted mouth is at the model's
size), so each face is aligned at about its own size in the frame: the aligned square's side in
frame pixels, rounded up to a multiple of :data:`SIZE_STEP`, at least the model's size, at most
``max_size``. Faces of one size are one batch. The tracker already has each face's mesh; mapped into
the aligned square it is handed on, so the generator does not mesh every face a second time. A
StarGAN generator only takes its own size: its faces are aligned at that size and meshed by nobody.
Faces the guided generator would leave as they are (in profile, tilted steeply) are not cut out at
all: pasted back, they would only be resampled twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from exaug.faces.align import apply_affine, estimate_similarity, get_template, warp_regions
from exaug.faces.blend import feather_mask, paste_faces
from exaug.faces.track import TrackedFace
from exaug.model.generator import ExpressionGenerator
from exaug.model.guided import GuidedExpressionGenerator

SIZE_STEP = 32  # aligned sizes come in steps of this many pixels (a few batch shapes per clip)
MAX_SIZE = 512  # the largest aligned face: a bigger one is pasted back from this size


@dataclass
class EditedFaces:
    """Edited faces of one aligned size, with what pastes each back into its frame."""

    faces: torch.Tensor  # (n, 3, S, S) uint8
    transforms: torch.Tensor  # (n, 2, 3) frame pixel -> aligned pixel
    frame_index: np.ndarray  # (n,) the frame of the chunk each face is in
    change: np.ndarray | None = None  # (n,) mean absolute change of each face in grey levels, when measured
    # (FaceEditor's measure_change: video --preview shows the most changed)


class FaceEditor:
    """Edits the tracked faces of a chunk's frames into ``emotion`` (or the expression of the aligned
    reference face ``like``) and pastes them back."""

    def __init__(self, generator: ExpressionGenerator | GuidedExpressionGenerator, emotion: str,
                 intensity: float = 1.0, *, like: torch.Tensor | None = None, max_size: int = MAX_SIZE,
                 measure_change: bool = False):
        self.generator, self.emotion, self.intensity, self.like = generator, emotion, intensity, like
        self.measure_change = measure_change
        self.full_resolution = generator.resolution_free
        self.template = generator.template or "exaug"
        self.max_size = max(max_size, generator.image_size)
        self._points: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}

    def size_for(self, side: float) -> int:
        """The aligned size for a face whose aligned square is ``side`` frame pixels wide."""
        if not self.full_resolution:
            return self.generator.image_size
        stepped = SIZE_STEP * int(np.ceil(side / SIZE_STEP))
        return int(min(max(stepped, self.generator.image_size), self.max_size))

    def edit(self, frames: torch.Tensor, tracked: list[list[TrackedFace]], strength: np.ndarray) -> list[EditedFaces]:
        """The faces of ``(n, H, W, 3)`` uint8 frames, edited; ``strength`` (n,) scales each frame's intensity."""
        faces = [(index, face) for index, found in enumerate(tracked) for face in found]
        if faces and self.full_resolution:
            moves = self.generator.moves(torch.from_numpy(np.stack([face.mesh for _, face in faces])))
            faces = [pair for pair, move in zip(faces, moves.tolist()) if move]
        if not faces:
            return []
        device = self.generator.device
        frame_index = np.array([index for index, _ in faces])
        points = torch.from_numpy(np.stack([face.landmarks for _, face in faces])).to(device)
        at_model = estimate_similarity(points, self._template(self.generator.image_size))
        sides = self.generator.image_size / torch.linalg.det(at_model[:, :, :2].double()).abs().sqrt()
        sizes = np.array([self.size_for(side) for side in sides.tolist()])
        groups = []
        for size in np.unique(sizes).tolist():
            members = np.flatnonzero(sizes == size)
            transforms = estimate_similarity(points[members], self._template(size))
            crops = torch.cat([warp_regions(frames[frame_index[member]], transforms[k:k + 1], size, "replicate")
                               for k, member in enumerate(members)]).round_().clamp_(0, 255).to(torch.uint8)
            weights = strength[frame_index[members]]
            intensity = (self.intensity if (weights == 1).all()
                         else torch.from_numpy(self.intensity * weights).float())
            extra = {}
            if self.full_resolution:  # the tracked meshes, in the aligned faces' pixels
                meshes = torch.from_numpy(np.stack([faces[member][1].mesh[:, :2] for member in members]))
                extra["meshes"] = apply_affine(transforms.double(), meshes.to(device).double()).float()
            if self.like is not None:
                extra["like"] = self.like
            edited = self.generator.generate(crops, None if self.like is not None else self.emotion,
                                             intensity=intensity, **extra)
            change = ((edited.float() - crops.float()).abs().mean(dim=(1, 2, 3)).cpu().numpy()
                      if self.measure_change else None)
            groups.append(EditedFaces(edited, transforms, frame_index[members], change))
        return groups

    def paste(self, frames: torch.Tensor, groups: list[EditedFaces], opacity: np.ndarray) -> torch.Tensor:
        """Paste ``groups`` into ``(n, H, W, 3)`` uint8 ``frames`` in place, each frame's faces under the
        feathered mask times ``opacity[frame]`` (a ramp fades the re-rendered face in, not only its expression)."""
        for group in groups:
            mask = self._mask(group.faces.shape[-1])
            for index in np.unique(group.frame_index).tolist():
                mine = torch.from_numpy(group.frame_index == index).to(group.faces.device)
                paste_faces(frames[index], group.faces[mine], group.transforms[mine], mask * float(opacity[index]))
        return frames

    def _template(self, size: int) -> torch.Tensor:
        if size not in self._points:
            self._points[size] = torch.from_numpy(get_template(self.template, size).points).to(self.generator.device)
        return self._points[size]

    def _mask(self, size: int) -> torch.Tensor:
        if size not in self._masks:
            self._masks[size] = feather_mask(size, self.generator.device)
        return self._masks[size]
