"""The floor a trained generator must beat: CK+'s mean expression, pasted on everyone unchanged.

No learning beyond averages, from the same training pairs the generator learns from
(:func:`exaug.train.pairs.load_pairs`):

* motion: per expression, the mean mesh displacement of its pairs (the geometry model's
  ``mean_motion``; ``adapted=True`` adds its per-face-shape regression), warped with the same
  thin-plate spline the generator uses;
* texture: per expression, the mean ratio image ``peak / warped neutral`` (luma, geometric mean,
  in the aligned template frame), which carries what motion cannot: teeth, furrows, shadows.

Applied unchanged to a new aligned face: warp it by the mean motion, multiply its luma by the mean
ratio. It ghosts (one mean texture on every face) and its motion is nobody's in particular, which
is the point: a generator that does not beat this has learnt nothing a mean could not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from exaug.expressions import EXPRESSIONS
from exaug.model.color import decode, encode
from exaug.model.geometry import ExpressionGeometry
from exaug.model.warp import mesh_field, warp
from exaug.train.guided import RATIO_EPSILON, fit_geometry
from exaug.train.pairs import PairedFaces

RATIO_LIMITS = (0.5, 2.0)
_CHUNK = 32


@dataclass
class MeanExpressionFloor:
    geometry: ExpressionGeometry
    ratio: Tensor  # (len(EXPRESSIONS), 1, S, S) float32: luma multiplier per expression, template frame
    adapted: bool = False
    use_ratio: bool = True

    def targets(self, meshes: Tensor, expressions: Sequence[str]) -> Tensor:
        """Where each ``(n, 468, 2)`` mesh's points go for its target expression (crop pixels)."""
        geometry = self.geometry
        if not self.adapted:
            geometry = ExpressionGeometry(**{**vars(geometry),
                                             "motion_regression": torch.zeros_like(geometry.motion_regression)})
        return geometry.target(meshes.double(), list(expressions), 1.0).float()

    @torch.inference_mode()
    def render(self, faces: Tensor, meshes: Tensor, expressions: Sequence[str]) -> Tensor:
        """uint8 RGB faces ``(n, 3, S, S)`` aligned on exaug's template, with their meshes, in ``expressions``."""
        size, out = faces.shape[-1], torch.empty_like(faces)
        for start in range(0, len(faces), _CHUNK):
            part = slice(start, start + _CHUNK)
            names = list(expressions[part])
            field = mesh_field(meshes[part].double(), self.targets(meshes[part], names).double(), size).float()
            luma, chroma = encode(faces[part], 1)
            moved = warp(luma, field)
            if self.use_ratio:
                ratio = self.ratio[[EXPRESSIONS.index(name) for name in names]]
                moved = with_ratio(moved, ratio)
            out[part] = decode(moved.clamp(-1, 1), warp(chroma, field))
        return out


def with_ratio(luma: Tensor, ratio: Tensor) -> Tensor:
    """Luma in [-1, 1] with its light times ``ratio`` (a mean ratio image), as the floor applies it:
    :data:`RATIO_EPSILON` grey levels added to the light before and taken off after, as when the
    ratio was measured. Not clamped."""
    return ((luma * 127.5 + 127.5 + RATIO_EPSILON) * ratio - RATIO_EPSILON - 127.5) / 127.5


def fit_floor(pairs: PairedFaces, neutral_meshes: Tensor, *, adapted: bool = False,
              use_ratio: bool = True) -> MeanExpressionFloor:
    """The floor from training ``pairs`` (both directions, as :func:`load_pairs` gives them) and every
    training neutral mesh (the geometry model's identity basis)."""
    geometry = fit_geometry(pairs, neutral_meshes)
    size = pairs.source.shape[-1]
    log_sum = torch.zeros(len(EXPRESSIONS), 1, size, size, dtype=torch.float64)
    count = torch.zeros(len(EXPRESSIONS), dtype=torch.float64)
    rows = torch.tensor([EXPRESSIONS.index(name) for name in pairs.target_expression])
    for start in range(0, len(pairs), _CHUNK):
        part = slice(start, start + _CHUNK)
        # Each pair warped by its own real motion: the ratio holds only what motion does not explain.
        field = mesh_field(pairs.source_mesh[part].double(), pairs.target_mesh[part].double(), size).float()
        warped = warp(encode(pairs.source[part], 1)[0], field) * 127.5 + 127.5
        peak = encode(pairs.target[part], 1)[0] * 127.5 + 127.5
        log_ratio = ((peak + RATIO_EPSILON) / (warped.clamp(0, 255) + RATIO_EPSILON)).log().double()
        log_sum.index_add_(0, rows[part], log_ratio)
        count.index_add_(0, rows[part], torch.ones(len(log_ratio), dtype=torch.float64))
    ratio = (log_sum / count.clamp_min(1)[:, None, None, None]).exp().clamp(*RATIO_LIMITS).float()
    return MeanExpressionFloor(geometry, ratio, adapted=adapted, use_ratio=use_ratio)
