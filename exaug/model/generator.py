"""Inference: a trained generator as a batch function from uint8 faces to uint8 faces."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exaug.device import autocast, memory_format, resolve_device
from exaug.expressions import canonical_expression
from exaug.model.checkpoint import GUIDED_FORMAT, generator_format, load_generator
from exaug.model.color import decode, encode

ExpressionSpec = str | Sequence[str] | Tensor


class ExpressionGenerator:
    """Re-renders aligned faces in other expressions.

    Faces go in and come out as uint8 RGB tensors (N, 3, S, S) on the caller's device, S being the
    model's image size (align faces with the model's :attr:`template` at that size first). A luma
    model edits the Y channel and keeps each face's own chroma, so it serves colour input too.

    **Intensity.** G is conditioned on a label vector over the expressions. For intensity ``t`` the
    label is ``(1 - t) * source + t * onehot(target)``: ``t = 1`` is the plain target expression,
    ``t = 0`` asks for the expression the face already shows (G then roughly reproduces it), and
    values between move towards the target. ``source`` is the one-hot of ``source_expressions``
    when the caller knows them, otherwise the softmax of the small source estimator trained beside
    G on the same real faces. G only ever saw one-hot labels in training, so intermediate labels
    give a smooth change that is monotone in practice but not calibrated: ``t = 0.5`` is "partway",
    not "half as strong".
    """

    resolution_free = False  # faces at the model's size only (GuidedExpressionGenerator takes any)
    max_intensity = 1.0  # a label blend cannot go past the one-hot target
    takes_like = False  # no reference faces: a StarGAN is conditioned on labels only

    def __init__(self, generator: nn.Module, source_estimator: nn.Module, meta: dict[str, Any],
                 *, max_batch: int | None = None):
        self._generator = generator
        self._source_estimator = source_estimator
        self._meta = meta
        self.device = next(generator.parameters()).device
        self._memory_format = memory_format(self.device)
        self.max_batch = max_batch or (128 if self.device.type == "cuda" else 16)

    @classmethod
    def load(cls, path: Path | str, device: str | torch.device = "auto", *,
             max_batch: int | None = None) -> ExpressionGenerator:
        """From an inference file or a training run directory (its newest checkpoint).

        ``max_batch`` bounds the faces per forward pass (default 128 on CUDA, on CPU 16 for StarGAN, 8 for the
        geometry-guided model).
        """
        if generator_format(Path(path)) == GUIDED_FORMAT:  # the geometry-guided generator, same interface
            from exaug.model.guided import GuidedExpressionGenerator

            return GuidedExpressionGenerator.load(path, device, max_batch=max_batch)
        device = resolve_device(device)
        generator, estimator, meta = load_generator(Path(path))
        generator.to(device, memory_format=memory_format(device))
        estimator.to(device, memory_format=memory_format(device))
        return cls(generator, estimator, meta, max_batch=max_batch)

    @property
    def image_size(self) -> int:
        return int(self._meta["image_size"])

    @property
    def channels(self) -> int:
        return int(self._meta["channels"])

    @property
    def expressions(self) -> tuple[str, ...]:
        return tuple(self._meta["expressions"])

    @property
    def template(self) -> str | None:
        """The alignment template the training faces were aligned with (None: unaligned crops)."""
        return self._meta.get("template")

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    def generate(self, faces: Tensor, expressions: ExpressionSpec, intensity: float | Tensor = 1.0,
                 source_expressions: ExpressionSpec | None = None) -> Tensor:
        """Each face in one expression: a name for all, one name per face, or an int tensor (N,)
        of indices into :attr:`expressions`. Returns uint8 RGB (N, 3, S, S) on ``faces``' device."""
        x, chroma = self._encode(faces)
        targets = self._indices(expressions, len(faces))
        labels = self._labels(x, targets, intensity, source_expressions)
        return self._render(x, labels, chroma).to(faces.device)

    def generate_all(self, faces: Tensor, expressions: Sequence[str], intensity: float | Tensor = 1.0,
                     source_expressions: ExpressionSpec | None = None) -> Tensor:
        """Every face in every listed expression, batched across targets: uint8 (N, E, 3, S, S)."""
        x, chroma = self._encode(faces)
        n, e = len(faces), len(expressions)
        targets = self._indices(list(expressions), e).repeat(n)

        def repeat(t: Tensor) -> Tensor:  # face i's E copies stay adjacent, matching ``targets``
            return t.repeat_interleave(e, dim=0)

        if isinstance(intensity, Tensor):
            intensity = repeat(intensity.to(self.device))
        sources = None if source_expressions is None else repeat(self._indices(source_expressions, n))
        x = repeat(x)
        labels = self._labels(x, targets, intensity, sources)
        out = self._render(x, labels, None if chroma is None else repeat(chroma))
        return out.view(n, e, *out.shape[1:]).to(faces.device)

    def estimate_expressions(self, faces: Tensor) -> Tensor:
        """Source estimator probabilities (N, E) for real faces: what :meth:`generate` blends from."""
        x, _ = self._encode(faces)
        return self._source_probs(x).to(faces.device)

    def _encode(self, faces: Tensor) -> tuple[Tensor, Tensor | None]:
        size = self.image_size
        if not isinstance(faces, Tensor) or faces.dtype != torch.uint8 or faces.ndim != 4 or faces.shape[1] != 3:
            raise ValueError("faces must be a uint8 RGB tensor (N, 3, H, W), got "
                             f"{getattr(faces, 'dtype', type(faces).__name__)} {tuple(getattr(faces, 'shape', ()))}")
        if faces.shape[2:] != (size, size):
            raise ValueError(f"this model works on {size}x{size} aligned faces, got "
                             f"{faces.shape[3]}x{faces.shape[2]} (align them at --size {size})")
        return encode(faces.to(self.device), self.channels)

    def _indices(self, spec: ExpressionSpec, n: int) -> Tensor:
        """Expression indices (n,) from a name, a list of n names, or an int tensor."""
        if isinstance(spec, Tensor):
            indices = spec.to(self.device, torch.long).flatten()
        else:
            names = [spec] * n if isinstance(spec, str) else list(spec)
            try:
                # dtype stated: an empty list would otherwise make a float tensor, which one_hot rejects
                indices = torch.tensor([self.expressions.index(canonical_expression(name) or name) for name in names],
                                       dtype=torch.long, device=self.device)
            except ValueError:
                known = ", ".join(self.expressions)
                raise ValueError(f"unknown expression in {names}; this model knows {known}") from None
        if len(indices) != n:
            raise ValueError(f"{len(indices)} expressions given for {n} faces")
        if len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < len(self.expressions):
            raise ValueError(f"expression indices must be in 0..{len(self.expressions) - 1}")
        return indices

    def _labels(self, x: Tensor, targets: Tensor, intensity: float | Tensor,
                sources: ExpressionSpec | None) -> Tensor:
        count = len(self.expressions)
        target = F.one_hot(targets, count).float()
        t = torch.as_tensor(intensity, dtype=torch.float32, device=self.device)
        if t.numel() not in (1, len(x)) or (t.numel() and (t.min() < 0 or t.max() > 1)):
            raise ValueError("intensity must be in [0, 1]: one number, or one per face")
        if bool((t == 1).all()):
            return target
        source = (F.one_hot(self._indices(sources, len(x)), count).float() if sources is not None
                  else self._source_probs(x))
        t = t.reshape(-1, 1)
        return (1 - t) * source + t * target

    @torch.inference_mode()
    def _source_probs(self, x: Tensor) -> Tensor:
        with autocast(self.device, torch.bfloat16):
            chunks = [self._source_estimator(x[i:i + self.max_batch].contiguous(memory_format=self._memory_format))
                      for i in range(0, len(x), self.max_batch)]
        return torch.cat(chunks).float().softmax(dim=1) if chunks else x.new_zeros(0, len(self.expressions))

    @torch.inference_mode()
    def _render(self, x: Tensor, labels: Tensor, chroma: Tensor | None) -> Tensor:
        out = torch.empty((len(x), 3, *x.shape[2:]), dtype=torch.uint8, device=self.device)
        for start in range(0, len(x), self.max_batch):
            part = slice(start, start + self.max_batch)
            with autocast(self.device, torch.bfloat16):
                edited, _ = self._generator(x[part].contiguous(memory_format=self._memory_format), labels[part])
            out[part] = decode(edited, None if chroma is None else chroma[part])
        return out
