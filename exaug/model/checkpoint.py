"""Checkpoint files: a small inference file and, apart from it, the state training resumes from.

Both are plain dicts of tensors, numbers and strings (metadata as a JSON string), so they load with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from it. The zip archive's
CRCs are checked before loading (torch does not check them, so damaged weights would load), and
the metadata's types and ranges are checked before anything is built from it. Both are written
atomically (temp file, fsync, rename), so a crash or Ctrl-C mid-write leaves the previous file.

The inference file holds G, the small source estimator (see
:class:`~exaug.model.networks.ExpressionClassifier`) and metadata: expressions, image size, channels,
mode, alignment template, a summary of the training data, steps and the exaug version. The training
state holds D, the optimisers, the step and the RNG states, and is only needed to resume.

A StarGAN run directory names its newest pair in ``latest`` (JSON, replaced atomically); a guided
run directory holds one pair under fixed names (:data:`GUIDED_RUN_FILES`). Anything that takes a
checkpoint path also takes either run directory.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exaug import __version__
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.io.atomic import atomic_write
from exaug.model.networks import ExpressionClassifier, Generator, ModelConfig

GENERATOR_FORMAT = "exaug.generator"
STATE_FORMAT = "exaug.train-state"
CLASSIFIER_FORMAT = "exaug.expression-classifier"  # exaug eval's judge (exaug.model.judge)
GUIDED_FORMAT = "exaug.guided-generator"  # the geometry-guided generator (exaug.model.guided)
FORMAT_VERSION = 1
_WHAT = {GENERATOR_FORMAT: "an inference (generator) file", GUIDED_FORMAT: "an inference (generator) file",
         STATE_FORMAT: "a training state file",
         CLASSIFIER_FORMAT: "an expression classifier file (written by exaug eval --save-classifier)"}
LATEST = "latest"
GUIDED_RUN_FILES = {"generator": Path("guided.generator.pt"), "state": Path("checkpoints") / "guided.state.pt"}


def cpu_state_dict(module: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """CPU tensors (DDP's ``module.`` prefix never reaches a file)."""
    module = getattr(module, "module", module)
    return {name: (t.detach().to("cpu", dtype) if dtype and t.is_floating_point() else t.detach().cpu())
            for name, t in module.state_dict().items()}


def generator_metadata(model: ModelConfig, *, expressions: list[str] | tuple[str, ...], template: str | None,
                       data: Mapping[str, Any], steps: int,
                       training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata an inference file carries: enough to rebuild G and to say what it was trained on."""
    return {
        "expressions": list(expressions),
        "image_size": model.image_size,
        "channels": model.channels,
        "mode": "rgb" if model.channels == 3 else "luma",
        "model": asdict(model),
        "template": template,
        "data": dict(data),
        "steps": steps,
        "training": dict(training or {}),
        "exaug_version": __version__,
    }


def save_weights(path: Path, file_format: str, meta: Mapping[str, Any], modules: Mapping[str, nn.Module],
                 dtype: torch.dtype | None = None) -> Path:
    """Write an exaug weights file: ``file_format``, the metadata as JSON, and each module's CPU
    state dict under its key; atomically."""
    payload = {"format": file_format, "format_version": FORMAT_VERSION, "meta": json.dumps(dict(meta)),
               **{key: cpu_state_dict(module, dtype) for key, module in modules.items()}}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_weights(path: Path, file_format: str, build: Callable[[dict[str, Any]], dict[str, nn.Module]], *,
                 damaged: str, check: Callable[[Path, Mapping[str, Any]], None] | None = None
                 ) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Read a file :func:`save_weights` wrote: ``check(path, payload)`` may refuse it first (one
    ExaugError), ``build(meta)`` makes the modules, which get their weights as fp32; a file whose
    weights do not fit them is one ExaugError starting ``damaged``."""
    payload = load_payload(path, file_format)
    if check is not None:
        check(path, payload)
    try:
        meta = json.loads(payload["meta"])
        modules = build(meta)
        for key, module in modules.items():
            module.load_state_dict({name: t.float() if t.is_floating_point() else t
                                    for name, t in payload[key].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ExaugError(f"{path}: {damaged}: {err}") from err
    return modules, meta


def save_generator(path: Path, generator: nn.Module, source_estimator: nn.Module, meta: Mapping[str, Any], *,
                   half: bool = False) -> Path:
    """Write the inference file; ``half`` stores weights in fp16 (half the size, outputs within a
    grey level or two), which is how the default model ships inside the package."""
    return save_weights(path, GENERATOR_FORMAT, {**meta, "dtype": "float16" if half else "float32"},
                        {"generator": generator, "source_estimator": source_estimator},
                        torch.float16 if half else None)


def save_state(path: Path, state: Mapping[str, Any]) -> Path:
    """Write a training state (a dict of state dicts, numbers and strings)."""
    return atomic_write(path, lambda handle: torch.save({"format": STATE_FORMAT, "format_version": FORMAT_VERSION,
                                                         **state}, handle))


def load_payload(path: Path, expected: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of an exaug file of format ``expected``, with every way a
    file can be wrong turned into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise ExaugError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise ExaugError(f"{path}: not a readable checkpoint (corrupt or truncated, or not a checkpoint at all)")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise ExaugError(f"{path}: not a readable checkpoint (corrupt or truncated?): {err}") from err
    if damaged is not None:
        raise ExaugError(f"{path}: damaged checkpoint ({damaged} fails its checksum); use another copy")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ExaugError(f"{path}: not an exaug checkpoint (it holds Python objects, e.g. a whole pickled model, "
                         "not just tensors; those are never loaded, as loading them could run code)") from err
    except Exception as err:  # zip, EOF and storage errors from a damaged archive
        raise ExaugError(f"{path}: not a readable checkpoint (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") not in _WHAT:
        raise ExaugError(f"{path}: not an exaug checkpoint")
    if payload["format"] != expected and _WHAT[payload["format"]] != _WHAT[expected]:
        raise ExaugError(f"{path}: this is {_WHAT[payload['format']]}; {_WHAT[expected]} is needed here")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ExaugError(f"{path}: damaged exaug checkpoint (format_version {version!r} is not a number)")
    if version > FORMAT_VERSION:
        raise ExaugError(f"{path}: written by a newer exaug (format {version}); upgrade exaug")
    return payload


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_weights(path: Path, payload: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        weights = payload.get(key)
        if not isinstance(weights, dict) or not all(isinstance(name, str) and isinstance(t, torch.Tensor)
                                                    for name, t in weights.items()):
            raise ExaugError(f"{path}: damaged exaug checkpoint ({key!r} is not a set of named tensors)")


def _checked_generator_meta(path: Path, text: Any) -> tuple[dict[str, Any], ModelConfig]:
    """An inference file's metadata and the model it describes, every field the right type and in
    range, or one ExaugError naming the field."""
    def wrong(field: str, value: Any, expected: str) -> ExaugError:
        return ExaugError(f"{path}: damaged exaug checkpoint (metadata {field} is {value!r}, expected {expected})")

    try:
        meta = json.loads(text)
    except (TypeError, ValueError) as err:
        raise ExaugError(f"{path}: damaged exaug checkpoint (metadata is not JSON: {err})") from err
    if not isinstance(meta, dict):
        raise wrong("", meta, "a JSON object")
    model = meta.get("model")
    kinds = {"image_size": _is_int, "channels": _is_int, "conv_dim": _is_int, "repeat_num": _is_int,
             "num_expressions": _is_int, "attention": lambda value: isinstance(value, bool)}
    if not isinstance(model, dict) or not set(model) <= set(kinds):
        raise wrong("model", model, f"an object with fields among {sorted(kinds)}")
    for name, value in model.items():
        if not kinds[name](value):
            raise wrong(f"model.{name}", value, "a boolean" if name == "attention" else "a whole number")
    try:
        config = ModelConfig(**model)
    except ValueError as err:
        raise ExaugError(f"{path}: damaged exaug checkpoint (metadata model: {err})") from err
    expressions = meta.get("expressions")
    if not (isinstance(expressions, list) and all(isinstance(name, str) for name in expressions)
            and len(expressions) == config.num_expressions == len(set(expressions))
            and set(expressions) <= set(EXPRESSIONS)):
        raise wrong("expressions", expressions, f"{config.num_expressions} distinct names among {list(EXPRESSIONS)}")
    for name, value in (("image_size", config.image_size), ("channels", config.channels)):
        if meta.get(name) != value or not _is_int(meta.get(name)):
            raise wrong(name, meta.get(name), f"{value}, as in its model")
    if meta.get("template") is not None and not isinstance(meta["template"], str):
        raise wrong("template", meta["template"], "a name or null")
    if "steps" in meta and not _is_int(meta["steps"]):
        raise wrong("steps", meta["steps"], "a whole number of at least 0")
    for name in ("data", "training"):
        if name in meta and not isinstance(meta[name], dict):
            raise wrong(name, meta[name], "an object")
    return meta, config


def resolve_checkpoint(path: Path, kind: str = "generator") -> Path:
    """A checkpoint file as given, or a run directory's ``kind`` ("generator" or "state"): a StarGAN
    run's newest (its ``latest`` pointer names it), a guided run's own."""
    path = Path(path)
    if not path.is_dir():
        return path
    latest = read_latest(path)
    if latest is None:
        guided = path / GUIDED_RUN_FILES[kind]
        if guided.is_file():
            return guided
        raise ExaugError(f"{path}: a folder with neither a StarGAN run's '{LATEST}' checkpoint pointer nor a guided "
                         f"run's {GUIDED_RUN_FILES[kind]} (not a training run, or one that has not saved yet?)")
    try:
        return path / latest[kind]
    except (KeyError, TypeError):
        raise ExaugError(f"{path / LATEST}: unreadable checkpoint pointer (no {kind!r} entry)") from None


def read_latest(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``latest`` pointer ({"step", "generator", "state"}), or None before its first save."""
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    try:
        return json.loads(pointer.read_text())
    except ValueError as err:
        raise ExaugError(f"{pointer}: unreadable checkpoint pointer ({err})") from err


def write_latest(run_dir: Path, step: int, generator: Path, state: Path) -> None:
    run_dir = Path(run_dir)
    text = json.dumps({"step": step, "generator": str(generator.relative_to(run_dir)),
                       "state": str(state.relative_to(run_dir))})
    atomic_write(run_dir / LATEST, lambda handle: handle.write(text.encode() + b"\n"))


def load_generator(path: Path) -> tuple[Generator, ExpressionClassifier, dict[str, Any]]:
    """Rebuild G and the source estimator (fp32, CPU) from an inference file or a run directory;
    its metadata and weights are type- and range-checked first."""
    def check(path: Path, payload: Mapping[str, Any]) -> None:
        _checked_generator_meta(path, payload.get("meta"))
        _check_weights(path, payload, ("generator", "source_estimator"))

    def build(meta: dict[str, Any]) -> dict[str, nn.Module]:
        config = ModelConfig(**meta["model"])
        return {"generator": Generator(config), "source_estimator": ExpressionClassifier(config)}

    modules, meta = load_weights(resolve_checkpoint(path, "generator"), GENERATOR_FORMAT, build,
                                 damaged="damaged exaug checkpoint (weights do not match its metadata)", check=check)
    return modules["generator"].eval(), modules["source_estimator"].eval(), meta


def generator_format(path: Path) -> str:
    """Which kind of generator an inference file (or a run's newest) holds: StarGAN's or the guided one."""
    return load_payload(resolve_checkpoint(path, "generator"), GENERATOR_FORMAT)["format"]


def save_guided(path: Path, painter: nn.Module, geometry: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *,
                half: bool = False) -> Path:
    """Write a geometry-guided generator: the painter's weights, the geometry model's tensors, metadata."""
    payload = {
        "format": GUIDED_FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": json.dumps({**meta, "dtype": "float16" if half else "float32",
                            "expressions": list(geometry["expressions"])}),
        "painter": cpu_state_dict(painter, torch.float16 if half else None),
        "geometry": {name: value for name, value in geometry.items() if name != "expressions"},
    }
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_guided(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(painter state dict, geometry state, metadata) of a guided generator file or run directory."""
    path = resolve_checkpoint(path, "generator")
    payload = load_payload(path, GUIDED_FORMAT)
    try:
        meta = json.loads(payload["meta"])
        geometry = {**payload["geometry"], "expressions": meta["expressions"]}
        return {name: t.float() for name, t in payload["painter"].items()}, geometry, meta
    except (KeyError, TypeError, ValueError) as err:
        raise ExaugError(f"{path}: damaged exaug checkpoint: {err}") from err


def load_state(path: Path) -> dict[str, Any]:
    """A training state from a state file or a run directory, its fields of the right types."""
    path = resolve_checkpoint(path, "state")
    payload = load_payload(path, STATE_FORMAT)
    if not _is_int(payload.get("step")):
        raise ExaugError(f"{path}: damaged training state (step is {payload.get('step')!r}, expected a whole number)")
    if not isinstance(payload.get("config", ""), str):
        raise ExaugError(f"{path}: damaged training state (config is not a JSON string)")
    return payload


def export_generator(source: Path | str, target: Path | str, *, half: bool = True, **notes: Any) -> Path:
    """Re-save a run's (or file's) generator for shipping: fp16 by default, ``notes`` added to its meta."""
    generator, estimator, meta = load_generator(Path(source))
    return save_generator(Path(target), generator, estimator, {**meta, **notes}, half=half)
