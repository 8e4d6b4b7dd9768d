"""Where tensors live: one rule for every command's ``--device auto|cpu|cuda``."""

from __future__ import annotations

import torch

from exaug.errors import ExaugError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error, not a crash later."""
    if isinstance(name, torch.device):
        return name
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ExaugError("--device cuda was asked for, but no CUDA device is available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ExaugError(f"unknown device {name!r}: use auto, cpu or cuda") from err
