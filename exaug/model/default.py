"""The generator shipped inside the package, used when a command gets no ``--model``."""

from __future__ import annotations

from pathlib import Path

from exaug.errors import ExaugError

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "default.pt"


def model_path(model: Path | None) -> Path:
    """``model`` when given, else the bundled default; without either, say how to get one."""
    if model is not None:
        if not model.exists():
            raise ExaugError(f"{model}: no such model file or run folder")
        return model
    if DEFAULT_MODEL.exists():
        return DEFAULT_MODEL
    raise ExaugError(
        "no --model given and this install has no bundled default model: train one with "
        "`exaug train ../shared/data/expressions/ckplus128 -o runs/ck` and pass `--model runs/ck`"
    )
