"""The eight expressions exaug synthesises, and the folder names that mean them.

Datasets spell expressions many ways (``angry``, ``happiness``, ``Surprised``); every place that
reads a label goes through :func:`canonical_expression` so the index of an expression is the same
everywhere: in checkpoints, HDF5 files and manifests.
"""

from __future__ import annotations

EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)

_ALIASES: dict[str, str] = {
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral",
    "happy": "happy", "happiness": "happy", "joy": "happy", "smile": "happy", "smiling": "happy",
    "sad": "sad", "sadness": "sad", "unhappy": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "anger": "anger", "angry": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
}


def canonical_expression(name: str) -> str | None:
    """The canonical name for a label or folder name, or None when it names no expression."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = key.split("_", 1)[1] if key[:1].isdigit() and "_" in key else key  # "0_neutral"
    return _ALIASES.get(key)


def expression_index(name: str) -> int:
    """Index into :data:`EXPRESSIONS`; raises ValueError naming the accepted spellings."""
    canonical = canonical_expression(name)
    if canonical is None:
        raise ValueError(f"unknown expression {name!r}; use one of {', '.join(EXPRESSIONS)}")
    return EXPRESSIONS.index(canonical)


def label_index(name: str | None) -> int:
    """How tables store a canonical expression label: its index in :data:`EXPRESSIONS`, -1 when
    unknown (None or "")."""
    return EXPRESSIONS.index(name) if name else -1


def label_name(index: int) -> str | None:
    """The canonical expression a table's ``index`` stores; None for -1 (unknown)."""
    return EXPRESSIONS[index] if index >= 0 else None


def parse_expressions(spec: str) -> list[str]:
    """Parse a comma list such as ``"happy,sad"`` (or ``"all"``) into canonical names, in order."""
    if spec.strip().lower() == "all":
        return list(EXPRESSIONS)
    names = [EXPRESSIONS[expression_index(part)] for part in spec.split(",") if part.strip()]
    if not names:
        raise ValueError(f"no expression given; name one or more of {', '.join(EXPRESSIONS)}")
    return list(dict.fromkeys(names))
