"""Training the geometry-guided generator on paired faces, on a CPU.

The geometry model is fitted in closed form (seconds); only the painter and the shader learn. Their
losses, named after what they ask:

* ``reconstruction``: L1 to the real target face of the same person over the painter's window (the
  pairs make this possible);
* ``shading_fit``: the shader's face-wide gain against the real target's light over the warped
  face's, at 32 px (:func:`light_ratio_error`); the painter works on top of its gain, which it sees
  as a constant;
* ``mask``: the painted area (1 - A) stays small, so the warp, not the painter, carries the face;
* ``smoothness``: total variation of A, so paint fades in instead of cutting patches;
* ``shading``: the painter's gain stays near one (mean absolute log-gain), so it darkens folds and
  lifts cheeks where the real faces do, not wherever it can trim a little L1;
* ``adversarial``: a PatchGAN hinge loss (pix2pix) over the window, so painted regions are not the
  soft average L1 alone gives;
* ``mesh``: the face mesh of the output lands where the mesh of the real target face lies (mean
  point distance in pixels, :func:`mesh_error`; the issue's "mesh loss"). The mesh reads a face
  warped by a real peak's motion as only 76-89% of that motion although its pixels moved as far as
  the real peak's: what is missing is the texture that comes with the motion (MODEL_CARD.md). This
  term asks the painter and the shader for it; it is the shader's one teacher besides its fit.

Painting happens in the paint region the generator uses at inference, under random relighting
(:func:`relight`).

The warp fields of the training pairs are solved once up front: the spline is the slow part and
does not change during training.

With a state file, the run saves everything that changes (both networks, both optimisers, the
sampler's random state) every ``save_every`` steps and when Ctrl-C or SIGTERM stops it, and a run
started on an existing state continues from it, so the 47-minute default recipe does not lose its
work to a Ctrl-C or a closed laptop; the resumed run is bit for bit the one that was not interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from exaug import __version__
from exaug.errors import ExaugError, require_counts, require_learning_rate
from exaug.expressions import EXPRESSIONS
from exaug.io.images import save_png
from exaug.io.sheets import labelled_grid
from exaug.model.checkpoint import GUIDED_RUN_FILES, load_state, save_guided, save_state
from exaug.model.color import encode
from exaug.model.geometry import ExpressionGeometry
from exaug.model.guided import TEMPLATE, CropMesher, GuidedGenerator, Rendered, with_gain
from exaug.model.painter import PainterConfig, PatchCritic
from exaug.progress import console, progress_bar
from exaug.train.loop import StopRequest, TrainingInterrupted, keep_metrics_until
from exaug.train.pairs import PairedFaces


@dataclass
class GuidedTrainConfig:
    steps: int = 5000
    batch_size: int = 16
    lr: float = 2e-4
    seed: int = 0
    log_every: int = 100
    save_every: int = 500  # steps between saves of the training state (when there is a state file)
    painter: PainterConfig = field(default_factory=PainterConfig)
    # Each loss's weight, by the name it has above and in metrics.jsonl.
    weights: dict[str, float] = field(default_factory=lambda: dict(LOSS_WEIGHTS))

    def __post_init__(self) -> None:
        require_counts({"--iters": self.steps, "batch_size": self.batch_size, "log_every": self.log_every,
                        "save_every": self.save_every})
        require_learning_rate(self.lr)
        if negative := [name for name, weight in self.weights.items() if not weight >= 0]:
            raise ExaugError(f"loss weights must be 0 or more, not {', '.join(negative)}")

    @classmethod
    def from_dict(cls, saved: dict) -> GuidedTrainConfig:
        """The config :func:`dataclasses.asdict` gave (read back from JSON: lists for tuples)."""
        painter = {**saved["painter"], "window": tuple(saved["painter"]["window"])}
        weights = {**{name: 0.0 for name in LOSS_WEIGHTS}, **saved["weights"]}  # a term a run did not have: weight 0
        return cls(**{**saved, "painter": PainterConfig(**painter), "weights": weights})


LOSS_WEIGHTS = {"reconstruction": 10.0, "shading_fit": 10.0, "mask": 0.5, "smoothness": 0.5, "shading": 0.05,
                "adversarial": 0.5, "mesh": 0.5}


def fit_geometry(pairs: PairedFaces, neutral_meshes: torch.Tensor) -> ExpressionGeometry:
    forward = [i for i, name in enumerate(pairs.source_expression) if name == "neutral"]
    return ExpressionGeometry.fit(pairs.source_mesh[forward], pairs.target_mesh[forward],
                                  [pairs.target_expression[i] for i in forward], EXPRESSIONS,
                                  all_neutral=neutral_meshes)


def solve_fields(model: GuidedGenerator, pairs: PairedFaces, device: str | torch.device = "cpu",
                 chunk: int = 16) -> torch.Tensor:
    return torch.cat([model.field(pairs.source_mesh[i:i + chunk].to(device), pairs.target_mesh[i:i + chunk].to(device)).float()
                      for i in range(0, len(pairs), chunk)])


def relight(source: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random exposure, contrast and gamma on both faces of each pair (in [-1, 1]): CK+ is
    one studio's lighting on mostly light skin, and a painter that only saw it pastes CK+-grey
    mouths into darker, brighter or flatter faces (a dark smudge, a pale band on the lips)."""
    count = len(source)
    draw = lambda low, high: (low + (high - low) * torch.rand(count, 1, 1, 1, generator=generator)).to(source.device)  # noqa: E731
    gain, gamma, offset = draw(0.6, 1.3), draw(-0.5, 0.5).exp(), draw(-0.15, 0.15)
    change = lambda x: (gain * ((x + 1) / 2).clamp(0, 1) ** gamma + offset).clamp(0, 1) * 2 - 1  # noqa: E731
    return change(source), change(target)


# Grey levels added to both sides of a light ratio (the floor's ratio image, the shader's target):
# dark pixels (pupils, the mouth) must not explode it.
RATIO_EPSILON = 8.0


def light_ratio_error(log_gain: torch.Tensor, warped: torch.Tensor, target: torch.Tensor, outline: torch.Tensor,
                      epsilon: float = RATIO_EPSILON / 127.5) -> torch.Tensor:
    """Mean squared error, inside ``outline``, between the predicted ``log_gain`` (N, 1, 32, 32) and the
    log ratio of the real target's light to the warped face's, both averaged down to 32 px: what the
    motion does not explain. Squared, so the shader learns the ratio's mean for faces like this one; an
    L1 (its median) keeps only the folds and lines everyone has in the same place (trained by L1 on the
    face's pixels, held-out smiles and surprise were judged 87% and 75%, MODEL_CARD.md). ``epsilon``:
    :data:`RATIO_EPSILON` in the faces' [-1, 1] scale."""
    light = lambda x: F.adaptive_avg_pool2d((x[:, :1] + 1).clamp_min(0), log_gain.shape[-1]) + epsilon  # noqa: E731
    ratio = (light(target) / light(warped)).log().clamp(-0.5, 0.5)
    return ((log_gain - ratio) ** 2 * outline).sum() / outline.sum().clamp_min(1)


def mesh_error(mesher: CropMesher, model: GuidedGenerator, rendered: Rendered, target_mesh: torch.Tensor) -> torch.Tensor:
    """Mean distance in pixels between the mesh of the rendered faces and ``target_mesh``, the mesh of
    the real target faces. Read on the output with the shader's gain live (the painter sees it
    detached), so both networks learn from it."""
    output = model.compose(with_gain(rendered.warped, rendered.log_gain), rendered.paint)[0]
    return (mesher.read((output + 1) * 127.5) - target_mesh).norm(dim=-1).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def train_guided(pairs: PairedFaces, neutral_meshes: torch.Tensor, config: GuidedTrainConfig,
                 log: Path | None = None, device: str | torch.device = "cpu", show_progress: bool = False, *,
                 state: Path | None = None, on_step: Callable[[int], None] | None = None) -> GuidedGenerator:
    """Fit the geometry, then train the painter for ``config.steps`` steps; returns the model (CPU).

    ``state``: the training state's file, saved every ``config.save_every`` steps, at the end, and
    when Ctrl-C or SIGTERM stops the run (then :class:`~exaug.train.loop.TrainingInterrupted` is
    raised); if it exists, training continues from it (``log`` loses the rows after it). ``on_step(step)``
    is called after every step."""
    saved = checked_state(state, config) if state is not None and state.exists() else None  # refused before any work
    torch.manual_seed(config.seed)
    model = GuidedGenerator(config.painter, fit_geometry(pairs, neutral_meshes))
    fields = solve_fields(model, pairs, device)
    codes = model.codes(pairs.source_mesh, pairs.target_mesh).to(device)
    model.painter.to(device)
    critic = PatchCritic(config.painter.channels).to(device)
    mesher = None
    if config.weights["mesh"]:
        mesher = CropMesher(config.painter.image_size)
        mesher.mesh.to(device).eval().requires_grad_(False)
    sources, _ = encode(pairs.source.to(device), config.painter.channels)
    targets, _ = encode(pairs.target.to(device), config.painter.channels)
    optimiser = torch.optim.Adam(model.painter.parameters(), lr=config.lr, betas=(0.5, 0.999))
    critic_optimiser = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(config.seed)
    parts = {"painter": model.painter, "critic": critic, "optimiser": optimiser, "critic_optimiser": critic_optimiser}
    start = 0
    if saved is not None:
        start = _restore(state, saved, parts, generator)
        console.print(f"resuming from step {start} of {config.steps} ({state})", highlight=False)
        if log is not None:
            keep_metrics_until(log, start)
    rows_window, columns_window = config.painter.window_slices()
    started = time.perf_counter()
    with StopRequest() if state is not None else nullcontext() as stop, \
            progress_bar("steps", disable=not show_progress) as bar:
        task = bar.add_task("training", total=config.steps, completed=start, info="")
        for step in range(start + 1, config.steps + 1):
            rows = torch.randint(len(pairs), (config.batch_size,), generator=generator).to(device)
            source, target = relight(sources[rows], targets[rows], generator)
            target_mesh = pairs.target_mesh[rows].float().to(device)
            # The painter works on top of the shading, which learns only from its own fit.
            rendered = model.render_layers(source, fields[rows], codes[rows], target_mesh, detach_gain=True)
            paint, output = rendered.paint, rendered.output[..., rows_window, columns_window]
            shading_fit = output.new_zeros(()) if rendered.log_gain is None else light_ratio_error(
                rendered.log_gain, rendered.warped, target, rendered.outline)
            target, warped = target[..., rows_window, columns_window], rendered.warped[..., rows_window, columns_window]
            if config.weights["adversarial"]:
                critic_loss = F.relu(1 - critic(target)).mean() + F.relu(1 + critic(output.detach())).mean()
                critic_optimiser.zero_grad()
                critic_loss.backward()
                critic_optimiser.step()
            losses = {
                "reconstruction": (output - target).abs().mean(),
                "shading_fit": shading_fit,
                "mask": (1 - paint.keep).mean(),
                "smoothness": total_variation(paint.keep),
                "shading": paint.shade.abs().mean() if paint.shade is not None else output.new_zeros(()),
                "adversarial": -critic(output).mean() if config.weights["adversarial"] else output.new_zeros(()),
                "mesh": output.new_zeros(()) if mesher is None else mesh_error(mesher, model, rendered, target_mesh),
            }
            total = sum(config.weights[name] * value for name, value in losses.items())
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            bar.update(task, advance=1)
            if log and (step % config.log_every == 0 or step == config.steps):
                record = {"step": step, **{k: round(v.item(), 4) for k, v in losses.items()},
                          "warp_only": round((warped - target).abs().mean().item(), 4),
                          "seconds": round(time.perf_counter() - started, 1)}
                with open(log, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            if on_step is not None:
                on_step(step)
            stopping = stop is not None and stop.requested
            if state is not None and (step % config.save_every == 0 or step == config.steps or stopping):
                _save(state, step, config, parts, generator)
            if stopping:
                console.print(f"[yellow]interrupted at step {step}[/]: saved {state}", highlight=False)
                raise TrainingInterrupted(step, state)
    return model.cpu().eval()


def _save(path: Path, step: int, config: GuidedTrainConfig, parts: dict, generator: torch.Generator) -> None:
    save_state(path, {"step": step, "config": json.dumps(asdict(config)), "sampler": generator.get_state(),
                      **{name: part.state_dict() for name, part in parts.items()}})


def checked_state(path: Path, config: GuidedTrainConfig) -> dict:
    """The training state at ``path``, refused (one line) if it is of a run with other options (the
    step count aside: a larger one extends a run) or has gone past ``config.steps``."""
    saved = load_state(path)
    try:
        options = json.loads(saved["config"])
    except ValueError as err:
        raise ExaugError(f"{path}: damaged training state (its options are not JSON: {err})") from None
    current = json.loads(json.dumps(asdict(config)))
    differ = sorted(name for name in set(options) | set(current)
                    if name != "steps" and options.get(name) != current.get(name))
    if differ:
        raise ExaugError(f"{path}: a training state of a run with other options ({', '.join(differ)}); "
                         "resume it with its own, or start a new run elsewhere")
    if saved["step"] > config.steps:
        raise ExaugError(f"{path}: has trained {saved['step']} steps already; {config.steps} would undo them")
    return saved


def _restore(path: Path, saved: dict, parts: dict, generator: torch.Generator) -> int:
    """Load a state :func:`_save` wrote into ``parts`` and ``generator``; returns its step."""
    try:
        for name, part in parts.items():
            part.load_state_dict(saved[name])
        generator.set_state(saved["sampler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ExaugError(f"{path}: damaged training state ({err})") from None
    return saved["step"]


def split_subjects(subjects: list[str], val_subjects: str) -> set[str]:
    """Held-out subjects: "auto" is every sixth subject in name order (20 of CK+'s 118 paired
    subjects: enough that one face does not decide a row); "K/F", fold K of F (every F-th from the
    K-th, counting from 0; "auto" is "0/6"), so that F runs hold out every person exactly once and
    their scores can be pooled (scripts/pool_folds.py); a number N, N subjects spread evenly
    through the names (no seed: the same people for every run on the data); else a comma list of
    ids, or "0"."""
    spec = val_subjects.strip()
    if spec == "auto":
        spec = "0/6"
    if spec in ("", "0"):
        return set()
    if "/" in spec:
        fold, _, folds = spec.partition("/")
        if not (fold.strip().isdigit() and folds.strip().isdigit() and 2 <= int(folds) and int(fold) < int(folds)):
            raise ExaugError(f"--val-subjects {spec}: a fold is K/F with 0 <= K < F and F >= 2")
        if not (held := set(subjects[int(fold)::int(folds)])):
            raise ExaugError(f"--val-subjects {spec}: that fold holds nobody (only {len(subjects)} subjects have pairs)")
        return held
    if spec.isdigit():
        count = int(spec)
        if count >= len(subjects):
            raise ExaugError(f"--val-subjects {count}: only {len(subjects)} subjects have pairs, none would be left "
                             "to train on")
        return {subjects[index * len(subjects) // count] for index in range(count)}
    chosen = {name.strip() for name in val_subjects.split(",") if name.strip()}
    if unknown := chosen - set(subjects):
        raise ExaugError(f"--val-subjects: no paired faces of {', '.join(sorted(unknown))}")
    return chosen


def save_guided_run(run: Path, model: GuidedGenerator, config: GuidedTrainConfig, validation: PairedFaces, *,
                    data: str, held_out: list[str]) -> Path:
    """The run's inference file (fp16 painter) and a sheet of held-out faces: each neutral face, then
    every expression rendered, then the same person's real peak."""
    meta = {"arch": "guided", "painter": asdict(config.painter), "image_size": config.painter.image_size,
            "channels": config.painter.channels, "mode": "luma" if config.painter.channels == 1 else "rgb",
            "template": TEMPLATE, "steps": config.steps,
            "data": {"path": data, "validation": {"held_out_subjects": held_out}},
            "training": asdict(config), "exaug_version": __version__}
    path = save_guided(run / GUIDED_RUN_FILES["generator"], model.painter, model.geometry.state(), meta, half=True)
    forward = [i for i, name in enumerate(validation.source_expression) if name == "neutral"][:8]
    if forward:
        from exaug.model.guided import GuidedExpressionGenerator

        generator = GuidedExpressionGenerator.load(path, "cpu")
        faces = validation.source[forward]
        rendered = generator.generate_all(faces, list(EXPRESSIONS))
        grid = torch.cat([faces[:, None], rendered, validation.target[forward][:, None]], 1)
        sheet = labelled_grid(grid.permute(0, 1, 3, 4, 2).numpy(), ["input", *EXPRESSIONS, "real peak"])
        save_png(sheet, run / "samples" / "held_out.png")
    return path
