"""One StarGAN iteration: the losses of the paper, on any device, under DDP and autocast.

Each iteration trains D (and the source estimator) on a batch; every ``n_critic``-th also trains G:

* D: ``d_loss_real + d_loss_fake + lambda_cls * d_loss_cls + lambda_gp * d_loss_gp`` (WGAN-GP
  critic on real and generated faces, expression cross-entropy on real faces,
  :func:`gradient_penalty` on random interpolations).
* the source estimator: ``e_loss_cls``, expression cross-entropy on the same real faces.
* G: ``g_loss_fake + lambda_cls * g_loss_cls + lambda_rec * g_loss_rec`` (+ ``lambda_mask *
  g_loss_mask`` with the attention mask): fool D, be classified as the target, and come back to
  the input when translated back to the source expression (L1 cycle reconstruction).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from exaug.device import autocast, memory_format
from exaug.faces.align import resize_faces
from exaug.model.checkpoint import cpu_state_dict
from exaug.model.color import encode
from exaug.model.networks import Discriminator, ExpressionClassifier, Generator
from exaug.train.config import TrainConfig
from exaug.train.distributed import unwrap

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def learning_rate(config: TrainConfig, step: int) -> float:
    """Constant for the first half of the iterations, then linear decay towards zero (StarGAN).

    A pure function of the step, so a resumed run follows the same schedule without saved state.
    """
    decay_start = config.iters // 2
    if step < decay_start:
        return config.lr
    return config.lr * (config.iters - step) / (config.iters - decay_start)


def mask_loss(mask: Tensor) -> Tensor:
    """GANimation's attention regulariser. A mask of ones (copy the input) trivially passes the
    cycle loss, so its mean is penalised; the total-variation term keeps it smooth (no speckle)."""
    tv = (mask[:, :, 1:] - mask[:, :, :-1]).pow(2).mean() + (mask[..., 1:] - mask[..., :-1]).pow(2).mean()
    return mask.float().mean() + tv.float()


def gradient_penalty(scores: Tensor, inputs: Tensor, scaler: torch.amp.GradScaler) -> Tensor:
    """WGAN-GP's ``(||d scores / d inputs||_2 - 1)^2``, averaged over the batch. The gradient is taken
    of the scaled scores (fp16 loss scaling would otherwise underflow) and unscaled before the norm."""
    scaled, = torch.autograd.grad(scaler.scale(scores.sum()), inputs, create_graph=True)
    gradient = scaled.float().flatten(1) / scaler.get_scale()
    return (gradient.norm(2, dim=1) - 1).pow(2).mean()


class Trainer:
    """G, D and the source estimator with their optimisers; :meth:`step` runs one iteration.

    ``generator``, ``discriminator`` and ``source_estimator`` are what training calls: under DDP
    (``distributed``) they are the DistributedDataParallel wrappers, and
    :func:`~exaug.train.distributed.unwrap` gives the network inside.
    """

    def __init__(self, config: TrainConfig, device: torch.device, *, distributed: bool = False):
        self.config = config
        self.device = device
        self.memory_format = memory_format(device)
        model = config.model
        self.generator, self.discriminator, self.source_estimator = (
            self._wrap(network(model).to(device, memory_format=self.memory_format), distributed)
            for network in (Generator, Discriminator, ExpressionClassifier))
        betas = (config.beta1, config.beta2)
        self.g_optimizer = torch.optim.Adam(self.generator.parameters(), config.lr, betas)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), config.lr, betas)
        self.e_optimizer = torch.optim.Adam(self.source_estimator.parameters(), config.lr, betas)
        self.amp_dtype = _AMP_DTYPES.get(config.amp) if device.type == "cuda" else None
        # fp16 needs loss scaling; bf16 has fp32's range and does not. D and E share one scale.
        self.d_scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.g_scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)

    def _wrap(self, module: nn.Module, distributed: bool) -> nn.Module:
        if not distributed:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 RGB batch -> model input: resized to the model's size, random horizontal flips."""
        faces = resize_faces(images.to(self.device, non_blocking=True), self.config.image_size)
        x = encode(faces, self.config.channels)[0]
        if self.config.flip:
            flip = torch.rand(len(x), device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous(memory_format=self.memory_format)

    def set_learning_rate(self, step: int) -> float:
        lr = learning_rate(self.config, step)
        for optimizer in (self.g_optimizer, self.d_optimizer, self.e_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def step(self, images: Tensor, labels: Tensor, step: int) -> dict[str, Tensor]:
        """Iteration ``step`` (0-based) on a uint8 batch; losses as detached tensors (no GPU sync)."""
        x_real = self.prepare(images)
        label_org = labels.to(self.device, non_blocking=True)
        # Targets are drawn uniformly, not from the batch's labels as in StarGAN: with CK+'s
        # imbalance the paper's choice would almost never ask G for contempt or fear.
        label_trg = torch.randint(0, self.config.model.num_expressions, label_org.shape, device=self.device)
        count = self.config.model.num_expressions
        c_org, c_trg = F.one_hot(label_org, count).float(), F.one_hot(label_trg, count).float()
        losses = self._d_step(x_real, label_org, c_trg)
        losses.update(self._source_estimator_step(x_real, label_org))
        self.d_scaler.update()
        if (step + 1) % self.config.n_critic == 0:
            losses.update(self._g_step(x_real, c_org, label_trg, c_trg))
        return losses

    def _d_step(self, x_real: Tensor, label_org: Tensor, c_trg: Tensor) -> dict[str, Tensor]:
        config = self.config
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            x_fake = self.generator(x_real, c_trg)[0].float()
        alpha = torch.rand(len(x_real), 1, 1, 1, device=self.device)
        x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
        count = len(x_real)
        with autocast(self.device, self.amp_dtype):
            # One pass over real, fake and interpolated faces: D has no normalisation layers, so
            # this equals three passes, and DDP sees one forward per backward.
            out_src, out_cls = self.discriminator(torch.cat([x_real, x_fake, x_hat]))
        src_real, src_fake, src_hat = out_src.float().split(count)
        d_loss_real = -src_real.mean()
        d_loss_fake = src_fake.mean()
        d_loss_cls = F.cross_entropy(out_cls[:count].float(), label_org)
        d_loss_gp = gradient_penalty(src_hat, x_hat, self.d_scaler)
        d_loss = d_loss_real + d_loss_fake + config.lambda_cls * d_loss_cls + config.lambda_gp * d_loss_gp
        self.d_optimizer.zero_grad(set_to_none=True)
        self.d_scaler.scale(d_loss).backward()
        self.d_scaler.step(self.d_optimizer)
        return _detached(d_loss=d_loss, d_loss_real=d_loss_real, d_loss_fake=d_loss_fake, d_loss_cls=d_loss_cls,
                         d_loss_gp=d_loss_gp)

    def _source_estimator_step(self, x_real: Tensor, label_org: Tensor) -> dict[str, Tensor]:
        """The source estimator learns the real faces' expressions, as D's classifier head does."""
        with autocast(self.device, self.amp_dtype):
            e_loss_cls = F.cross_entropy(self.source_estimator(x_real).float(), label_org)
        self.e_optimizer.zero_grad(set_to_none=True)
        self.d_scaler.scale(e_loss_cls).backward()
        self.d_scaler.step(self.e_optimizer)
        return _detached(e_loss_cls=e_loss_cls)

    def _g_step(self, x_real: Tensor, c_org: Tensor, label_trg: Tensor, c_trg: Tensor) -> dict[str, Tensor]:
        config = self.config
        critic = unwrap(self.discriminator)  # only G learns here: D is read unwrapped (no DDP sync)
        critic.requires_grad_(False)
        try:
            with autocast(self.device, self.amp_dtype):
                x_fake, mask = self.generator(x_real, c_trg)
                out_src, out_cls = critic(x_fake)
                x_rec, mask_rec = self.generator(x_fake, c_org)
        finally:
            critic.requires_grad_(True)
        losses = {
            "g_loss_fake": -out_src.float().mean(),
            "g_loss_cls": F.cross_entropy(out_cls.float(), label_trg),
            "g_loss_rec": (x_real - x_rec.float()).abs().mean(),
        }
        g_loss = (losses["g_loss_fake"] + config.lambda_cls * losses["g_loss_cls"]
                  + config.lambda_rec * losses["g_loss_rec"])
        if mask is not None:
            losses["g_loss_mask"] = mask_loss(mask) + mask_loss(mask_rec)
            g_loss = g_loss + config.lambda_mask * losses["g_loss_mask"]
        self.g_optimizer.zero_grad(set_to_none=True)
        self.g_scaler.scale(g_loss).backward()
        self.g_scaler.step(self.g_optimizer)
        self.g_scaler.update()
        return _detached(g_loss=g_loss, **losses)

    def state_dict(self, step: int) -> dict[str, Any]:
        """Everything a resumed run needs to continue as if never stopped (this rank's RNG included)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": step,
            "generator": cpu_state_dict(self.generator),
            "discriminator": cpu_state_dict(self.discriminator),
            "source_estimator": cpu_state_dict(self.source_estimator),
            "g_optimizer": self.g_optimizer.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
            "e_optimizer": self.e_optimizer.state_dict(),
            "g_scaler": self.g_scaler.state_dict(),
            "d_scaler": self.d_scaler.state_dict(),
            "rng": rng,
        }

    def load_state_dict(self, state: Mapping[str, Any], *, restore_rng: bool = True) -> None:
        for name in ("generator", "discriminator", "source_estimator"):
            unwrap(getattr(self, name)).load_state_dict(state[name])
        for name in ("g_optimizer", "d_optimizer", "e_optimizer", "g_scaler", "d_scaler"):
            if state[name]:
                getattr(self, name).load_state_dict(state[name])
        if restore_rng:
            torch.set_rng_state(state["rng"]["torch"])
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def _detached(**losses: Tensor) -> dict[str, Tensor]:
    return {name: value.detach() for name, value in losses.items()}
