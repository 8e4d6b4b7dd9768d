"""What the benchmark scripts share: which model to time, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import torch

from exaug.device import bf16_pays_on
from exaug.expressions import EXPRESSIONS
from exaug.model.checkpoint import generator_metadata, save_generator
from exaug.model.default import DEFAULT_MODEL
from exaug.model.generator import ExpressionGenerator
from exaug.model.networks import ExpressionClassifier, Generator, ModelConfig

DATA = Path(os.environ.get("EXAUG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load_model(model: str | None, device: str, image_size: int, max_batch: int | None = None) -> tuple[ExpressionGenerator, str]:
    """The given or bundled model; ``untrained`` builds the default architecture (speed does not
    depend on the weights) at ``image_size``."""
    if model != "untrained":
        path = Path(model) if model else DEFAULT_MODEL
        return ExpressionGenerator.load(path, device, max_batch=max_batch), str(path)
    config = ModelConfig(image_size=image_size)
    meta = generator_metadata(config, expressions=EXPRESSIONS, template="exaug", data={}, steps=0)
    path = Path(tempfile.mkdtemp()) / "untrained.pt"
    save_generator(path, Generator(config), ExpressionClassifier(config), meta)
    return ExpressionGenerator.load(path, device, max_batch=max_batch), f"untrained {config}"


def machine(device: str) -> dict[str, str | int]:
    """What the figures depend on: the device's name and, for a CPU, the widest vector code torch runs
    there (AVX2, AVX512) and whether the guided painter runs in bf16 there (AMX or AVX512-BF16): the
    project's machines have changed from Xeons with AMX to AMD EPYCs, AVX2-only on 2026-12-01 and
    with AVX512-BF16 on 2026-12-02."""
    if device == "cuda":
        return {"device": device, "name": torch.cuda.get_device_name(), "torch": torch.__version__}
    return {"device": device, "name": _cpu_model() or platform.processor() or platform.machine(),
            "vector_code": torch.backends.cpu.get_cpu_capability(), "painter_bf16": bf16_pays_on(torch.device("cpu")),
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
