"""Training ``exaug eval``'s judge (:mod:`exaug.model.judge`) on real faces, with train's
class-balanced sampler."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from exaug.device import resolve_device
from exaug.errors import ExaugError
from exaug.model.judge import augment, judge_input, judge_network
from exaug.progress import progress_bar
from exaug.train.faceset import FaceSet, TrainSampler


def train_classifier(faces: FaceSet, *, image_size: int, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
                     device: str | torch.device = "auto", seed: int = 0, show_progress: bool = False) -> nn.Module:
    """A ResNet-18 from scratch on ``faces`` at ``image_size``; returned in eval mode.

    Batches are class-balanced (train's sampler), so CK+'s 18 contempt faces weigh as much as its
    593 neutral ones; an epoch is as many faces as the set holds. Faces are read a batch at a time,
    so a large HDF5 table never has to fit in memory. The seed fixes the weights and the batches
    without touching the global RNG.
    """
    if not len(faces):
        raise ExaugError("no faces to train the expression classifier on")
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = judge_network().to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr, weight_decay=1e-4)
    augment_rng = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(faces) / batch_size)
    batches = iter(TrainSampler(faces.labels, batch_size, seed=seed, balance=True))
    network.train()
    with progress_bar("batches", disable=not show_progress) as bar:
        task = bar.add_task("training the expression classifier", total=steps, info="")
        for _ in range(steps):
            index = next(batches)
            x = augment(judge_input(faces.faces_at(index, image_size).to(device)), augment_rng)
            loss = F.cross_entropy(network(x), torch.from_numpy(faces.labels[index]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    return network.eval()
