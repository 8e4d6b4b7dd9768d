"""exaug: expression augmentation for face datasets and videos.

The library is usable without the CLI; the names below load on first use, so ``import exaug`` is
cheap and a command pays only for what it runs::

    from exaug import ExpressionGenerator, align_dataset, augment_dataset
    generator = ExpressionGenerator.load("runs/ck")
    augment_dataset("faces/", "augmented.h5", generator, model_hash="...")
"""

from __future__ import annotations

import importlib
from typing import Any

from exaug.errors import ExaugError, ImageLoadError, InputError
from exaug.expressions import EXPRESSIONS, canonical_expression

__version__ = "0.1.0"

_LAZY = {
    "FaceDetector": "exaug.faces.detect", "DetectionOptions": "exaug.faces.detect",
    "FaceAligner": "exaug.faces.align", "get_template": "exaug.faces.align",
    "load_image": "exaug.io.images", "discover_sources": "exaug.io.sources",
    "read_faces": "exaug.io.store", "open_writer": "exaug.io.store", "merge": "exaug.io.store",
    "ExpressionGenerator": "exaug.model.generator",
    "TrainConfig": "exaug.train", "train": "exaug.train",
    "AlignOptions": "exaug.pipelines.align", "align_dataset": "exaug.pipelines.align",
    "AugmentOptions": "exaug.pipelines.augment", "augment_dataset": "exaug.pipelines.augment",
    "VideoOptions": "exaug.pipelines.video", "edit_video": "exaug.pipelines.video",
    "AugmentedFaces": "exaug.data",
}

__all__ = ["EXPRESSIONS", "ExaugError", "ImageLoadError", "InputError", "canonical_expression", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'exaug' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
