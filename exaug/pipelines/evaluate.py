"""``exaug eval``: how well the generator does what it is asked, and how little it does besides.

The StarGAN protocol: an expression classifier trained on real faces of some subjects is scored
on real faces of held-out subjects (how good a judge it is), then on faces the generator rendered
from those held-out subjects into every expression (how often the judge sees the asked-for one).
Held-out means whole subjects, by default the ones the generator itself never trained on, so
neither network has seen the people it is scored on.

Two numbers say what the generator changes that it should not: the mean absolute change outside
the inner face (where :func:`~exaug.faces.blend.feather_mask` is 0: background, hair, neck) and the
cycle error, how far ``G(G(x, target), source)`` lands from ``x``. Both are in grey levels (0-255).

The classifier (the judge) is :mod:`exaug.model.judge`, trained by :mod:`exaug.train.judge`, or a
saved one: also the FER2013 judge (``scripts/train_fer_judge.py``), which never saw CK+ and judges
faces moved into FER's 48 px framing; expressions it has no class for (contempt) are not judged
(None). The terminal table is the CLI's (:mod:`exaug.cli.eval`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from exaug import __version__
from exaug.device import resolve_device
from exaug.errors import ExaugError, require_counts
from exaug.expressions import EXPRESSIONS
from exaug.faces.blend import feather_mask
from exaug.io.atomic import check_writable
from exaug.io.images import save_png
from exaug.io.outputs import check_sheet_path
from exaug.io.sheets import labelled_grid
from exaug.model.generator import ExpressionGenerator
from exaug.model.judge import Judge, JudgePanel, load_judge, panel_of
from exaug.pipelines.training import training_data
from exaug.progress import progress_bar
from exaug.train.faceset import FaceSet, load_faces, split_validation
from exaug.train.judge import train_classifier

OUTSIDE_THRESHOLD = 0.01  # feather_mask below this is "outside the face"


@dataclass(frozen=True)
class EvalOptions:
    """``val_subjects`` None: the subjects the generator held out (as its metadata records them);
    otherwise train's syntax (a number or a comma list), drawn with ``seed``. ``max_faces`` caps the
    classifier's training faces and the held-out faces alike (a random subset): quick checks only."""

    val_subjects: str | None = None
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    device: str = "auto"
    classifier: Path | list[Path] | None = None  # load this (several: a panel) instead of training one
    save_classifier: Path | None = None
    align: bool = True
    cache_dir: str | None = None
    max_faces: int | None = None
    sheet: Path | None = None  # also draw the first held-out faces, generated, with the judge's verdicts
    sheet_faces: int = 8
    show_progress: bool = True

    def __post_init__(self) -> None:
        require_counts({f"--{name.replace('_', '-')}": getattr(self, name) for name in ("epochs", "batch_size", "max_faces")})


@dataclass
class EvalReport:
    """Accuracies are fractions in [0, 1]; None for an expression without held-out real faces, or
    one the judge has no class for (FER2013's judge: contempt)."""

    data: str
    held_out_subjects: list[str]
    training_subjects: list[str]
    split: str  # how the held-out subjects were chosen
    classifier: str  # where the classifier came from
    real_count: dict[str, int]
    real_accuracy: dict[str, float | None]
    real_overall: float
    real_mean_per_expression: float  # CK+ is 2/3 neutral: the overall figure is mostly neutral's
    generated_count: dict[str, int]
    generated_accuracy: dict[str, float | None]
    generated_overall: float
    outside_change: float  # grey levels, mean over every generated face's outside pixels
    cycle_error: float  # grey levels, mean over held-out faces and targets other than their own
    generator_steps: int | None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EvalReport:
        return cls(**json.loads(text))


def evaluate(generator: ExpressionGenerator, data_path: Path | str, options: EvalOptions | None = None) -> EvalReport:
    """Score ``generator`` on the held-out subjects of ``data_path`` (any data ``exaug train`` takes)."""
    options = options or EvalOptions()
    started = time.perf_counter()
    if tuple(generator.expressions) != EXPRESSIONS:
        raise ExaugError(f"the generator's expressions {generator.expressions} are not exaug's {EXPRESSIONS}")
    if options.save_classifier is not None:
        check_writable(options.save_classifier)
    if options.sheet is not None:
        check_sheet_path(options.sheet, data_path, data_path)
    faces = _load(generator, Path(data_path), options)
    train_pos, held_pos, split = _split(faces, generator.meta, options)
    rng = np.random.default_rng(options.seed)
    training, held = (faces.subset(_at_most(positions, options.max_faces, rng)) for positions in (train_pos, held_pos))
    if not len(held):
        raise ExaugError(f"{data_path}: no held-out faces to evaluate on")
    loaded = time.perf_counter()

    judge, provenance = _classifier(training, held, generator.image_size, options)
    trained = time.perf_counter()

    scores = _score(generator, judge, held, options)
    if options.sheet is not None:
        save_png(verdict_sheet(scores.shown, judge), options.sheet)
    finished = time.perf_counter()
    real_count = np.bincount(held.labels, minlength=len(EXPRESSIONS))
    judged = np.array([name in judge.expressions for name in EXPRESSIONS])
    real_accuracy = [float(c / n) if n and known else None for c, n, known in zip(scores.real_correct, real_count, judged)]
    generated_accuracy = [float(c / len(held)) if known else None for c, known in zip(scores.generated_correct, judged)]
    return EvalReport(
        data=str(data_path),
        held_out_subjects=held.known_subjects(),
        training_subjects=training.known_subjects(),
        split=split,
        classifier=provenance,
        real_count=dict(zip(EXPRESSIONS, real_count.tolist())),
        real_accuracy=dict(zip(EXPRESSIONS, real_accuracy)),
        real_overall=float(scores.real_correct[judged].sum() / real_count[judged].sum()),
        real_mean_per_expression=float(np.mean([a for a in real_accuracy if a is not None])),
        generated_count={name: len(held) for name in EXPRESSIONS},
        generated_accuracy=dict(zip(EXPRESSIONS, generated_accuracy)),
        generated_overall=float(np.mean([a for a in generated_accuracy if a is not None])),
        outside_change=scores.outside_change,
        cycle_error=scores.cycle_error,
        generator_steps=generator.meta.get("steps"),
        seconds={"loading": round(loaded - started, 2), "classifier": round(trained - loaded, 2),
                 "evaluation": round(finished - trained, 2), "total": round(finished - started, 2)},
    )


def _load(generator: ExpressionGenerator, path: Path, options: EvalOptions) -> FaceSet:
    """The data as ``exaug train`` reads it, for this generator: its size, its template."""
    data = training_data(path, align=options.align, image_size=generator.image_size,
                         template=generator.template or "exaug", cache_dir=options.cache_dir,
                         device=resolve_device(options.device), show_progress=options.show_progress)
    faces = load_faces(data, image_size=generator.image_size, crops=not options.align,
                       show_progress=options.show_progress, source=path)
    if faces.template != generator.template:
        def described(template: str | None) -> str:
            return f"the {template} template" if template else "unaligned crops (--no-align)"
        raise ExaugError(f"{path}: faces are {described(faces.template)}, but the generator was trained on "
                         f"{described(generator.template)}; evaluate it on faces made the same way")
    return faces


def _split(faces: FaceSet, meta: dict[str, Any], options: EvalOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and held-out positions, and how the held-out subjects were chosen."""
    validation = meta.get("data", {}).get("validation", {})
    recorded = validation.get("held_out_subjects") if isinstance(validation, dict) else None
    if options.val_subjects is not None:
        train_pos, held_pos, note = split_validation(faces, options.val_subjects, options.seed)
        if recorded is not None:
            seen = set(faces.subset(held_pos).known_subjects()) - set(recorded)
            if seen:
                note += f"; the generator trained on {len(seen)} of these subjects"
        return train_pos, held_pos, note
    if recorded:
        try:
            train_pos, held_pos, note = split_validation(faces, ",".join(recorded), options.seed)
        except ExaugError as err:
            raise ExaugError(f"{faces.source}: not every subject the generator held out is in this data ({err}); "
                             "choose held-out subjects with --val-subjects") from None
        return train_pos, held_pos, f"the generator's held-out subjects: {note}"
    if recorded is not None:
        raise ExaugError("the generator held out no subjects (trained with --val-subjects 0), so it has seen every "
                         "face; choose held-out subjects with --val-subjects to evaluate anyway")
    train_pos, held_pos, note = split_validation(faces, "auto", options.seed)
    return train_pos, held_pos, (f"{note}; the generator does not record its held-out subjects: these are the "
                                 f"same only if it was trained on this data with --val-subjects auto "
                                 f"--seed {options.seed}")


def _at_most(positions: np.ndarray, count: int | None, rng: np.random.Generator) -> np.ndarray:
    if count is None or len(positions) <= count:
        return positions
    return np.sort(rng.choice(positions, count, replace=False))


def _classifier(training: FaceSet, held: FaceSet, image_size: int,
                options: EvalOptions) -> tuple[Judge | JudgePanel, str]:
    """The classifier ``options`` names (checked against this evaluation; several vote as a
    :class:`JudgePanel`) or one trained here. A judge with its own framing (FER2013's) takes faces of
    any size; exaug's CK+ judge only its own."""
    if options.classifier is not None:
        paths = [options.classifier] if isinstance(options.classifier, (str, Path)) else list(options.classifier)
        if len(paths) > 1 and options.save_classifier is not None:
            raise ExaugError(f"--save-classifier saves one classifier, not a panel of {len(paths)}")
        judges = [_loaded_judge(Path(path), held, image_size, options.device) for path in paths]
        judge = panel_of(judges)
        provenance = "; ".join(
            f"loaded from {path} (trained for {one.meta.get('epochs')} epochs on {one.meta.get('faces')} faces of "
            f"{one.meta.get('data')})" for path, one in zip(paths, judges))
        if len(judges) > 1:
            provenance = f"a panel of {len(judges)} voting with their mean probability: {provenance}"
        unjudged = [name for name in EXPRESSIONS if name not in judge.expressions]
        if unjudged:
            provenance += f"; not judged (no such class): {', '.join(unjudged)}"
    else:
        network = train_classifier(training, image_size=image_size, epochs=options.epochs,
                                   batch_size=options.batch_size, lr=options.lr, device=options.device,
                                   seed=options.seed, show_progress=options.show_progress)
        meta = {"image_size": image_size, "expressions": list(EXPRESSIONS), "epochs": options.epochs,
                "faces": len(training), "training_subjects": training.known_subjects(), "data": training.source,
                "seed": options.seed, "exaug_version": __version__}
        judge = Judge(network, meta)
        provenance = (f"trained here for {options.epochs} epochs on {len(training)} faces of "
                      f"{len(training.known_subjects())} subjects")
    if options.save_classifier is not None:
        judge.save(options.save_classifier)
    return judge, provenance


def _loaded_judge(path: Path, held: FaceSet, image_size: int, device: str) -> Judge:
    """A saved classifier, refused when it cannot judge this evaluation fairly or at all."""
    judge = load_judge(path, device)
    meta = judge.meta
    if not meta.get("frame") and meta.get("image_size") != image_size:
        raise ExaugError(f"{path}: a classifier for {meta.get('image_size')}px faces; this "
                         f"generator makes {image_size}px faces")
    if not set(judge.expressions) <= set(EXPRESSIONS):
        raise ExaugError(f"{path}: its expressions {meta.get('expressions')} are not exaug's")
    overlap = set(meta.get("training_subjects", ())) & set(held.known_subjects())
    if overlap:
        raise ExaugError(f"{path}: trained on held-out subjects ({', '.join(sorted(overlap)[:8])}), "
                         "which would overstate its accuracy; use the split it was saved with, or train a new one")
    return judge


@dataclass
class _Shown:
    """The first held-out faces, what they became, and what the judge saw in each."""

    faces: list[Tensor] = field(default_factory=list)  # (n, 3, S, S) uint8 per batch
    generated: list[Tensor] = field(default_factory=list)  # (n, E, 3, S, S)
    labels: list[Tensor] = field(default_factory=list)  # (n,) the real faces' expressions
    real_judged: list[Tensor] = field(default_factory=list)  # (n,)
    generated_judged: list[Tensor] = field(default_factory=list)  # (n, E)

    def add(self, room: int, *columns: Tensor) -> None:
        for kept, column in zip((self.faces, self.generated, self.labels, self.real_judged, self.generated_judged),
                                columns):
            kept.append(column[:room].cpu())

    def __len__(self) -> int:
        return sum(len(faces) for faces in self.faces)


@dataclass
class _Scores:
    real_correct: np.ndarray  # (E,) held-out real faces the classifier got right, per expression
    generated_correct: np.ndarray  # (E,) generated faces classified as the target they were made for
    outside_change: float
    cycle_error: float
    shown: _Shown


def verdict_sheet(shown: _Shown, judge: Judge | JudgePanel) -> Image.Image:
    """Rows: held-out faces; columns: the real face, then each expression generated from it; under
    each, what the judge saw (under the real face, its label first): green when it is what was asked
    (the real label), red when not, black for an expression the judge has no class for."""
    if not len(shown):
        raise ExaugError("no held-out faces to draw")
    faces, generated = torch.cat(shown.faces), torch.cat(shown.generated)
    grid = torch.cat([faces[:, None], generated], 1).permute(0, 1, 3, 4, 2).numpy()
    judged = torch.cat([torch.cat(shown.real_judged)[:, None], torch.cat(shown.generated_judged)], 1).numpy()
    asked = np.concatenate([torch.cat(shown.labels).numpy()[:, None],
                            np.broadcast_to(np.arange(len(EXPRESSIONS)), (len(faces), len(EXPRESSIONS)))], 1)
    known = np.array([name in judge.expressions for name in EXPRESSIONS])[asked]
    marks = np.where(known, (judged == asked).astype(np.int8), -1)
    captions = [[f"{EXPRESSIONS[real]}: {EXPRESSIONS[row[0]]}", *(EXPRESSIONS[index] for index in row[1:])]
                for real, row in zip(asked[:, 0], judged)]
    return labelled_grid(grid, ["real: judged", *EXPRESSIONS], captions, marks)


def _score(generator: ExpressionGenerator, judge: Judge | JudgePanel, held: FaceSet, options: EvalOptions) -> _Scores:
    """Classify the held-out faces and every rendering of them; measure what changed where it should not.

    Faces go through a batch at a time: each becomes ``len(EXPRESSIONS)`` generated faces and as
    many cycled back, so memory is bounded by the batch, not the data.
    """
    size, count = generator.image_size, len(EXPRESSIONS)
    outside = (feather_mask(size, generator.device) < OUTSIDE_THRESHOLD)[0]
    real_correct = np.zeros(count, np.int64)
    generated_correct = np.zeros(count, np.int64)
    outside_sum = cycle_sum = 0.0
    cycle_terms = 0
    shown = _Shown()
    with progress_bar("faces", disable=not options.show_progress) as bar:
        task = bar.add_task("rendering held-out faces", total=len(held), info="")
        for start in range(0, len(held), options.batch_size):
            positions = np.arange(start, min(start + options.batch_size, len(held)))
            faces = held.faces_at(positions, size).to(generator.device)
            labels = torch.from_numpy(held.labels[positions])
            real_judged = judge.predict(faces, template=generator.template, batch_size=options.batch_size)
            real_hits = real_judged == labels
            real_correct += np.bincount(labels[real_hits].numpy(), minlength=count)

            generated = generator.generate_all(faces, EXPRESSIONS)  # (n, E, 3, S, S)
            flat = generated.flatten(0, 1)
            predicted = judge.predict(flat, template=generator.template, batch_size=options.batch_size).view(-1, count)
            generated_correct += (predicted == torch.arange(count)).sum(dim=0).numpy()
            if options.sheet is not None and len(shown) < options.sheet_faces:
                shown.add(options.sheet_faces - len(shown), faces, generated, labels, real_judged, predicted)

            change = (generated.float() - faces[:, None].float()).abs()
            outside_sum += float(change[..., outside].mean(dim=(2, 3)).sum())

            back = generator.generate(flat, labels.to(generator.device).repeat_interleave(count)).view_as(generated)
            cycle = (back.float() - faces[:, None].float()).abs().mean(dim=(2, 3, 4)).cpu()  # (n, E)
            other = torch.arange(count) != labels[:, None]
            cycle_sum += float(cycle[other].sum())
            cycle_terms += int(other.sum())
            bar.update(task, advance=len(positions))
    return _Scores(real_correct, generated_correct, outside_change=outside_sum / (len(held) * count),
                   cycle_error=cycle_sum / cycle_terms, shown=shown)
