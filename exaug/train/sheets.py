"""Sample sheets: the same validation faces in every expression, saved every N steps, so progress
(and collapse, or identity drift) is visible at a glance across a run."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from exaug.io.sheets import labelled_grid
from exaug.model.generator import ExpressionGenerator


def sample_sheet(generator: ExpressionGenerator, faces: Tensor) -> Image.Image:
    """Rows: ``faces`` (uint8 RGB at the model's size); columns: the input, then every expression.
    Goes through the inference path, so a sheet shows exactly what ``generate`` would give."""
    names = list(generator.expressions)
    grid = torch.cat([faces.to(generator.device)[:, None], generator.generate_all(faces, names)], dim=1)
    return labelled_grid(grid.permute(0, 1, 3, 4, 2).cpu().numpy(), ["input", *names])
