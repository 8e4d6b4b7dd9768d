"""Every training option in one dataclass, saved as RUN_DIR/config.json so ``--resume`` continues
the same run (written atomically; the training state keeps a copy, which ``--resume`` falls back on
when config.json is missing or damaged). Defaults are StarGAN's (lambda_cls 1, lambda_rec 10, lambda_gp 10, n_critic 5, Adam
1e-4 with betas (0.5, 0.999), batch 16, linear decay over the second half of the iterations)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from exaug.errors import ExaugError, require_counts, require_learning_rate
from exaug.io.atomic import atomic_write
from exaug.model.checkpoint import load_state, read_latest
from exaug.model.networks import ModelConfig, ModelOptionError

CONFIG_FILE = "config.json"
AMP_MODES = ("bf16", "fp16", "none")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelConfig):
    """Options of one training run; paths are strings so the file stays plain JSON.

    The network's options (``image_size``, ``channels``, ``conv_dim``, ``repeat_num``,
    ``attention``) are :class:`~exaug.model.networks.ModelConfig`'s, inherited; :attr:`model` is
    that part alone, as checkpoints store it.

    ``iters`` counts discriminator iterations (G trains every ``n_critic``-th), as in StarGAN.
    ``batch_size`` is per process: with N processes under torchrun the effective batch is N times it.
    ``align``: False reads DATA's expression sub-folders as ready-cropped faces, without face
    detection (FER2013's 48px faces defeat MTCNN; CK+ crops are already tight).
    ``val_subjects``: "auto" (about 5% of the subjects), a number of subjects, a comma list of
    subject ids, or "0" for none; whole subjects are held out so samples show unseen people.
    """

    data: str
    output: str
    iters: int = 200_000
    batch_size: int = 16
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 5
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    lambda_mask: float = 0.1
    balance: bool = False
    val_subjects: str = "auto"
    flip: bool = True
    align: bool = True
    template: str = "exaug"
    cache_dir: str | None = None
    sample_every: int = 1000
    save_every: int = 10_000
    log_every: int = 10
    keep: int = 3
    n_samples: int = 8
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    amp: str = "bf16"

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ModelOptionError as err:  # said as the option the user typed
            raise ExaugError(f"--{err.field.replace('_', '-')} must be {err.expected}, not {err.value}") from None
        if self.amp not in AMP_MODES:
            raise ExaugError(f"--amp must be one of {', '.join(AMP_MODES)}, not {self.amp!r}")
        require_counts({f"--{name.replace('_', '-')}": getattr(self, name) for name in (
            "iters", "batch_size", "n_critic", "sample_every", "save_every", "log_every", "keep", "n_samples")})
        if self.workers < 0:
            raise ExaugError("--workers must be 0 or more")
        require_learning_rate(self.lr)
        for name in ("lambda_cls", "lambda_rec", "lambda_gp", "lambda_mask"):
            if not getattr(self, name) >= 0:
                raise ExaugError(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(self, name)}")

    @property
    def model(self) -> ModelConfig:
        return ModelConfig(**{field.name: getattr(self, field.name) for field in fields(ModelConfig)})

    def save(self, run_dir: Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        atomic_write(Path(run_dir) / CONFIG_FILE, lambda handle: handle.write(text.encode()))

    @classmethod
    def load(cls, run_dir: Path, **runtime: object) -> TrainConfig:
        """The config of an existing run; ``runtime`` replaces options that leave the model and the
        data alone: device and workers (to resume on another machine) and iters (to extend a run)."""
        path = Path(run_dir) / CONFIG_FILE
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            saved = _saved_in_state(Path(run_dir))
            if saved is None:
                reason = f"missing; is {run_dir} a training run directory?" if isinstance(err, FileNotFoundError) \
                    else f"unreadable ({err})"
                raise ExaugError(f"{path}: {reason}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(saved) - known
        if unknown:
            raise ExaugError(f"{path}: unknown options {sorted(unknown)} (written by a newer exaug?)")
        allowed = {"device", "workers", "iters"}
        if set(runtime) - allowed:
            raise ValueError(f"only {sorted(allowed)} can change on resume")
        return replace(cls(**saved), output=str(run_dir), **runtime)


def _saved_in_state(run_dir: Path) -> dict | None:
    """The options the run's newest training state was saved with, None when it has no state."""
    if read_latest(run_dir) is None:
        return None
    try:
        saved = json.loads(load_state(run_dir)["config"])
    except (KeyError, TypeError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None
