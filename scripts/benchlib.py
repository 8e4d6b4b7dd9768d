"""What the benchmark scripts share: which model to time, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

import torch

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
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    return {"device": device, "name": name, "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
