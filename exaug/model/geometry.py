"""Expression geometry learnt from paired faces: where each mesh point goes for an expression.

An expression is mostly motion of the face's own points (mouth corners, lips, jaw, eyelids, brows).
CK+ gives that motion directly: each labelled sequence starts neutral and ends at its peak, same
person, same session. From those pairs this module learns a small linear shape model in a
canonical frame (meshes brought onto a common pose with points an expression does not move):

* an identity basis ``I`` (PCA of neutral meshes): how faces differ at rest;
* an expression basis ``E`` (PCA of peak - neutral displacements): how faces move;
* per expression ``e``, its mean displacement and a ridge regression from identity coefficients,
  so a wide mouth moves differently from a narrow one: ``D_e(a) = mean_e + R_e a``.

A face's mesh ``m`` (any expression) is explained as ``mu + I a + E b``: ``a`` is who, ``b`` how the
face is moving now. The target geometry for expression ``e`` at intensity ``t`` is
``m - E b + t D_e(a)`` (the face's own points, its present expression removed), and for the
expression of a reference face with code ``b_ref`` it is ``m - E b + t E b_ref`` (GC-GAN's "target expression from
another subject"). Intensity 1.0 is the mean CK+ peak of that expression for this face shape; values
up to 1.5 extrapolate along the same motion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from exaug.errors import ExaugError
from exaug.faces.align import apply_affine, estimate_similarity, invert_affine
# Points an expression barely moves: eye corners, the nose bridge and tip, the top of the head
# outline. Meshes are put in the canonical frame by a similarity fit on these alone, so a smile's
# moving mouth corners do not tilt or shrink the frame.
STABLE_POINTS = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 10, 338, 109, 297, 67, 21, 251, 54, 284, 127, 356)


def _pca(samples: Tensor, components: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean, the first ``components`` principal directions (rows) of ``(n, d)`` samples, their
    variances, and the variance per coordinate that those directions leave unexplained."""
    mean = samples.mean(0)
    _, singular, directions = torch.linalg.svd(samples - mean, full_matrices=False)
    variances = singular.square() / max(1, len(samples) - 1)
    residual = variances[components:].sum() / samples.shape[1]
    return mean, directions[:components].clone(), variances[:components].clone(), residual


@dataclass
class ExpressionGeometry:
    """The linear shape model above; every tensor is float64 on the CPU (it is tiny)."""

    expressions: tuple[str, ...]
    reference: Tensor  # (k, 2) stable points of the mean neutral mesh: the canonical frame
    mean_shape: Tensor  # (936,) mean neutral mesh, x and y flattened, canonical frame
    identity_basis: Tensor  # (ki, 936)
    expression_basis: Tensor  # (ke, 936)
    feature_basis: Tensor  # (kf, 936) PCA of every mesh, neutral and peak: what the expression reader sees
    expression_reader: Tensor  # (kf, ke) ridge regression: a mesh's features -> its expression codes
    mean_motion: Tensor  # (len(expressions), 936): mean displacement per expression (neutral: 0)
    motion_regression: Tensor  # (len(expressions), 936, ki): displacement change per identity coefficient

    @classmethod
    def fit(cls, neutral: Tensor, peak: Tensor, labels: Sequence[str], expressions: Sequence[str], *,
            all_neutral: Tensor | None = None, identity_components: int = 10, expression_components: int = 16,
            feature_components: int = 40,
            ridge: float = 4.0) -> ExpressionGeometry:
        """From paired ``(n, 468, 2)`` meshes (neutral frame and peak of the same sequence) with the peak's
        expression label; ``all_neutral`` (every neutral mesh, default ``neutral``) shapes the identity basis."""
        all_neutral = neutral if all_neutral is None else all_neutral
        # Each basis needs as many samples as it has directions (the reader's features may have fewer).
        if len(all_neutral) < identity_components or 2 * len(neutral) < expression_components:
            raise ExaugError(f"too few faces for the geometry model ({len(all_neutral)} neutral, {len(neutral)} "
                             f"sequence pairs): it needs at least {identity_components} neutral faces and "
                             f"{-(-expression_components // 2)} pairs")
        stable = list(STABLE_POINTS)
        reference = all_neutral.double()[:, stable].mean(0)
        for _ in range(3):  # Procrustes mean: refit the frame to the mean of the aligned meshes
            frame = estimate_similarity(all_neutral.double()[:, stable], reference, torch.float64)
            aligned = apply_affine(frame, all_neutral.double())
            reference = aligned[:, stable].mean(0)
        canonical = lambda meshes: _canonical(meshes.double(), reference)  # noqa: E731
        mean_shape, identity_basis, _, _ = _pca(canonical(all_neutral).flatten(1), identity_components)
        rest = canonical(neutral)
        # Each frame on its own stable points: the head may turn between the neutral and the peak.
        motion = (canonical(peak) - rest).flatten(1)
        _, expression_basis, _, _ = _pca(torch.cat([motion, -motion]), expression_components)
        # Reading a single face's expression: the identity and motion bases overlap (people differ at
        # rest partly the way faces move), so splitting a mesh between them is ill-posed and gives a
        # neutral face a sizeable "expression". A regression trained on what is known instead, every
        # neutral face has no motion and every peak its own, reads it directly.
        shapes = torch.cat([canonical(all_neutral), canonical(peak)]).flatten(1) - mean_shape
        _, feature_basis, _, _ = _pca(shapes, feature_components)
        features = shapes @ feature_basis.T
        answers = torch.cat([torch.zeros(len(all_neutral), motion.shape[1], dtype=torch.float64), motion]) @ expression_basis.T
        gram = features.T @ features
        reader = torch.linalg.solve(gram + ridge * gram.diagonal().mean() * 1e-2 * torch.eye(len(gram), dtype=torch.float64),
                                    features.T @ answers)
        codes = (rest.flatten(1) - mean_shape) @ identity_basis.T
        mean_motion = torch.zeros(len(expressions), motion.shape[1], dtype=torch.float64)
        regression = torch.zeros(len(expressions), motion.shape[1], identity_components, dtype=torch.float64)
        for index, name in enumerate(expressions):
            mine = torch.tensor([label == name for label in labels])
            if not mine.any():
                continue
            mean_motion[index] = motion[mine].mean(0)
            x, y = codes[mine], motion[mine] - mean_motion[index]
            # Ridge scaled by the group size: 18 contempt pairs cannot support what 80 surprise pairs can.
            penalty = ridge * torch.eye(identity_components, dtype=torch.float64) * (1 + 100 / len(x))
            spread = x.var(0).mean() if len(x) > 1 else x.square().mean()  # one pair has no variance
            regression[index] = torch.linalg.solve(x.T @ x + penalty * spread.clamp_min(1e-8), x.T @ y).T
        return cls(tuple(expressions), reference, mean_shape, identity_basis, expression_basis, feature_basis, reader,
                   mean_motion, regression)

    def explain(self, meshes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Who and how: identity codes ``a``, expression codes ``b``, and each mesh's canonical frame."""
        frame = estimate_similarity(meshes.double()[:, list(STABLE_POINTS)], self.reference, torch.float64)
        shapes = apply_affine(frame, meshes.double()).flatten(1) - self.mean_shape
        expression = (shapes @ self.feature_basis.T) @ self.expression_reader
        identity = (shapes - self.code_motion(expression)) @ self.identity_basis.T
        return identity, expression, frame

    def motion_for(self, identity: Tensor, expressions: Sequence[str]) -> Tensor:
        """Canonical displacement ``(n, 936)`` of expression ``expressions[i]`` for face shape ``identity[i]``."""
        rows = torch.tensor([self.expressions.index(name) for name in expressions])
        return self.mean_motion[rows] + (self.motion_regression[rows] @ identity[..., None])[..., 0]

    def code_motion(self, codes: Tensor) -> Tensor:
        """Canonical displacement of expression codes (a reference face's ``b``)."""
        return codes @ self.expression_basis

    def target(self, meshes: Tensor, expressions: Sequence[str] | None = None, intensity: float | Tensor = 1.0,
               *, like: Tensor | None = None) -> Tensor:
        """Where each ``(n, 468, 2+)`` mesh's points go: for ``expressions`` (one name per mesh), or for
        the expression of the reference meshes ``like`` (one per mesh). Same frame as ``meshes``."""
        identity, current, frame = self.explain(meshes[..., :2])
        if like is not None:
            motion = self.code_motion(self.explain(like[..., :2])[1])
        else:
            motion = self.motion_for(identity, expressions)
        weight = torch.as_tensor(intensity, dtype=torch.float64).reshape(-1, 1)
        # The face's own points (every detail the bases miss), less its present expression, plus the target's.
        rest = apply_affine(frame, meshes[..., :2].double()).flatten(1) - self.code_motion(current)
        canonical = (rest + weight * motion).reshape(len(meshes), -1, 2)
        return apply_affine(invert_affine(frame), canonical).to(meshes.dtype)

    def state(self) -> dict:
        return {"expressions": list(self.expressions), "reference": self.reference, "mean_shape": self.mean_shape,
                "identity_basis": self.identity_basis, "expression_basis": self.expression_basis,
                "feature_basis": self.feature_basis, "expression_reader": self.expression_reader,
                "mean_motion": self.mean_motion, "motion_regression": self.motion_regression}

    @classmethod
    def from_state(cls, state: dict) -> ExpressionGeometry:
        tensors = {name: value.double() for name, value in state.items() if name != "expressions"}
        return cls(tuple(state["expressions"]), **tensors)


def _canonical(meshes: Tensor, reference: Tensor) -> Tensor:
    frame = estimate_similarity(meshes[:, list(STABLE_POINTS)], reference, torch.float64)
    return apply_affine(frame, meshes)
