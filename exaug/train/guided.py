"""Training the geometry-guided generator on paired faces, on a CPU.

The geometry model is fitted in closed form (seconds); only the painter learns. Its losses, named
after what they ask:

* ``reconstruction``: L1 to the real target face of the same person (the pairs make this possible);
* ``mask``: the painted area (1 - A) stays small, so the warp, not the painter, carries the face;
* ``smoothness``: total variation of A, so paint fades in instead of cutting patches;
* ``adversarial``: a PatchGAN hinge loss (pix2pix) so painted regions are not the soft average L1
  alone gives.

The warp fields of the training pairs are solved once up front: the spline is the slow part and
does not change during training.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from exaug.expressions import EXPRESSIONS
from exaug.model.color import encode
from exaug.model.geometry import ExpressionGeometry
from exaug.model.guided import GuidedGenerator
from exaug.model.painter import PainterConfig, PatchCritic
from exaug.train.pairs import PairedFaces


@dataclass
class GuidedTrainConfig:
    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-4
    lambda_reconstruction: float = 10.0
    lambda_mask: float = 0.5
    lambda_smoothness: float = 0.5
    lambda_adversarial: float = 0.5
    seed: int = 0
    log_every: int = 10
    painter: PainterConfig = field(default_factory=PainterConfig)


def fit_geometry(pairs: PairedFaces, neutral_meshes: torch.Tensor) -> ExpressionGeometry:
    forward = [i for i, name in enumerate(pairs.source_expression) if name == "neutral"]
    return ExpressionGeometry.fit(pairs.source_mesh[forward], pairs.target_mesh[forward],
                                  [pairs.target_expression[i] for i in forward], EXPRESSIONS,
                                  all_neutral=neutral_meshes)


def solve_fields(model: GuidedGenerator, pairs: PairedFaces, device: str | torch.device = "cpu",
                 chunk: int = 16) -> torch.Tensor:
    return torch.cat([model.field(pairs.source_mesh[i:i + chunk].to(device), pairs.target_mesh[i:i + chunk].to(device)).float()
                      for i in range(0, len(pairs), chunk)])


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def train_guided(pairs: PairedFaces, neutral_meshes: torch.Tensor, config: GuidedTrainConfig,
                 log: Path | None = None, device: str | torch.device = "cpu") -> GuidedGenerator:
    """Fit the geometry, then train the painter for ``config.steps`` steps; returns the model (CPU)."""
    torch.manual_seed(config.seed)
    model = GuidedGenerator(config.painter, fit_geometry(pairs, neutral_meshes))
    fields = solve_fields(model, pairs, device)
    codes = model.codes(pairs.source_mesh, pairs.target_mesh).to(device)
    model.painter.to(device)
    critic = PatchCritic(config.painter.channels).to(device)
    sources, _ = encode(pairs.source.to(device), config.painter.channels)
    targets, _ = encode(pairs.target.to(device), config.painter.channels)
    optimiser = torch.optim.Adam(model.painter.parameters(), lr=config.lr, betas=(0.5, 0.999))
    critic_optimiser = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        rows = torch.randint(len(pairs), (config.batch_size,), generator=generator).to(device)
        face, target, batch_field = sources[rows], targets[rows], fields[rows]
        output, keep, warped = _paint(model, face, batch_field, codes[rows])
        if config.lambda_adversarial:
            critic_loss = F.relu(1 - critic(target)).mean() + F.relu(1 + critic(output.detach())).mean()
            critic_optimiser.zero_grad()
            critic_loss.backward()
            critic_optimiser.step()
        losses = {
            "reconstruction": (output - target).abs().mean(),
            "mask": (1 - keep).mean(),
            "smoothness": total_variation(keep),
            "adversarial": -critic(output).mean() if config.lambda_adversarial else output.new_zeros(()),
        }
        total = sum(getattr(config, f"lambda_{name}") * value for name, value in losses.items())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        if log and (step % config.log_every == 0 or step == config.steps):
            record = {"step": step, **{k: round(v.item(), 4) for k, v in losses.items()},
                      "warp_only": round((warped - target).abs().mean().item(), 4),
                      "seconds": round(time.perf_counter() - started, 1)}
            with open(log, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    return model.cpu().eval()


def _paint(model: GuidedGenerator, faces: torch.Tensor, field: torch.Tensor, codes: torch.Tensor):
    from exaug.model.warp import identity_field, warp

    warped = warp(faces, field)
    grid = F.interpolate(field.permute(0, 3, 1, 2), size=faces.shape[-2:], mode="bilinear", align_corners=False)
    motion = grid - identity_field(len(faces), faces.shape[-1], faces.device).permute(0, 3, 1, 2)
    output, keep = model.painter(faces, warped, motion, codes)
    return output, keep, warped


def config_json(config: GuidedTrainConfig) -> str:
    return json.dumps(asdict(config))
