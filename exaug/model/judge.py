"""``exaug eval``'s judge: an expression classifier (ResNet-18 from scratch), its input and its file.

The judge always sees luma (replicated to ResNet's three channels): a colour model cannot score by
tinting a face, and a greyscale dataset is judged the same way. It is trained by
:func:`exaug.train.judge.train_classifier` and saved in the same weights-only format as the
generator (:mod:`exaug.model.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from exaug.device import resolve_device
from exaug.expressions import EXPRESSIONS
from exaug.model.checkpoint import CLASSIFIER_FORMAT, load_weights, save_weights
from exaug.model.color import encode


def judge_network() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=len(EXPRESSIONS))


def judge_input(faces: Tensor) -> Tensor:
    """uint8 RGB (N,3,S,S) -> luma in [-1, 1], replicated to three channels."""
    return encode(faces, 1)[0].expand(-1, 3, -1, -1)


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and crops shifted by up to 1/16 of the side (edges replicated)."""
    count, _, size, _ = x.shape
    flip = (torch.rand(count, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, size // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (count, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, top:top + size, left:left + size] for i, (top, left) in enumerate(offsets)])


@torch.inference_mode()
def predict_expressions(network: nn.Module, faces: Tensor, *, batch_size: int = 128) -> Tensor:
    """Expression indices (N,) on the CPU for uint8 RGB faces (N,3,S,S)."""
    device = next(network.parameters()).device
    chunks = [network(judge_input(faces[i:i + batch_size].to(device))).argmax(dim=1).cpu()
              for i in range(0, len(faces), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)


def save_classifier(path: Path | str, network: nn.Module, meta: dict[str, Any]) -> Path:
    """Weights and metadata only (loads with ``weights_only=True``), written atomically."""
    return save_weights(Path(path), CLASSIFIER_FORMAT, meta, {"network": network})


def load_classifier(path: Path | str, device: str | torch.device = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """The network (eval mode, on ``device``) and its metadata; any way the file is wrong is one
    ExaugError. Files holding Python objects are refused, never unpickled."""
    modules, meta = load_weights(Path(path), CLASSIFIER_FORMAT, lambda meta: {"network": judge_network()},
                                 damaged="damaged classifier file")
    return modules["network"].to(resolve_device(device)).eval(), meta
