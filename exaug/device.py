"""Where tensors live: one rule for every command's ``--device auto|cpu|cuda``, the CUDA settings
(memory layout, mixed precision) that training and inference share, and which of a launcher's
processes this one is (torchrun's environment)."""

from __future__ import annotations

import os

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


def launcher_variable(name: str, default: int, minimum: int) -> int:
    """A whole number a launcher (torchrun, a scheduler) sets in the environment: ``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``; ``default`` when unset. A value that is not a whole number of at least
    ``minimum`` is the environment's mistake, said in one line naming the variable, not int()'s
    traceback."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ExaugError(f"environment variable {name}={text!r}: expected a whole number of at least {minimum} "
                         "(torchrun and other launchers set it; unset it to run a single process)")
    return value


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (cuDNN's fast convolutions), the default layout elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def bf16_pays_on(device: torch.device) -> bool:
    """Whether small convolutional networks should run in bf16 on ``device``: on a CPU whose vector
    units compute in bf16, where oneDNN runs bf16 convolutions on them: AMX tiles (the guided
    painter: 2.3 instead of 5.8 ms a face on a 2-core Xeon) or AVX512-BF16 (a 2-core AMD EPYC: the
    MJPEG clip's generate stage 4.0-4.2 s instead of 4.4-5.1 s); the output within 0.04 grey levels
    on average. Without either (an AVX2-only CPU) oneDNN has no bf16 arithmetic and would convert in
    software, so fp32 stays; CUDA keeps fp32 too, as the painter is not its cost."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.9
    if device.type != "cpu" or get_capabilities is None:
        return False
    capabilities = get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision in ``dtype`` on CUDA; off (fp32) on the CPU or when ``dtype`` is None."""
    enabled = device.type == "cuda" and dtype is not None
    return torch.autocast(device_type=device.type, dtype=dtype if enabled else torch.float32, enabled=enabled)
