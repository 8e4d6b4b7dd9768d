"""``exaug train DATA -o RUN_DIR`` and ``exaug train --resume RUN_DIR``; under torchrun too."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from exaug.cli.common import TemplateChoice
from exaug.cli.common import DEVICE, DeviceChoice
from exaug.errors import ExaugError
from exaug.progress import console
from exaug.pipelines.training import train_model
from exaug.train import TrainConfig


class AmpChoice(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


def _default(name: str) -> Any:
    """The library's default, so the CLI and TrainConfig cannot disagree."""
    return TrainConfig.__dataclass_fields__[name].default


def train_command(
    data: Optional[Path] = typer.Argument(
        None, metavar="DATA", show_default=False,
        help="Aligned faces from `exaug align` (.h5 or folder), or a folder with one sub-folder per expression "
             "(aligned first; the result is cached)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="RUN_DIR",
                                          help="Run folder: config, metrics.jsonl, samples/, checkpoints/, latest."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="RUN_DIR",
        help="Continue this run from its last checkpoint with its saved options (only --device, --workers and "
             "--iters apply; a larger --iters extends a run, even a finished one)."),
    image_size: int = typer.Option(_default("image_size"), help="Face size in pixels: 64, 128 or 256."),
    channels: int = typer.Option(_default("channels"),
                                 help="3 (RGB) or 1 (luma: for greyscale data; still edits colour faces)."),
    conv_dim: int = typer.Option(_default("conv_dim"), help="Width of G's and D's first layer."),
    repeat_num: int = typer.Option(_default("repeat_num"), help="Residual blocks in G."),
    attention: bool = typer.Option(_default("attention"), "--attention/--no-attention",
                                   help="GANimation attention mask: keep the pixels an expression does not touch."),
    iters: Optional[int] = typer.Option(
        None, show_default=False,
        help=f"Discriminator iterations (G trains every --n-critic) [default: {_default('iters')}]. With --resume: "
             "the new total; the learning rate follows the new schedule."),
    batch_size: int = typer.Option(_default("batch_size"), help="Faces per step and process."),
    lr: float = typer.Option(_default("lr"), help="Adam learning rate; decays linearly over the second half."),
    n_critic: int = typer.Option(_default("n_critic"), help="D iterations per G iteration."),
    lambda_cls: float = typer.Option(_default("lambda_cls"), help="Weight of the expression classification loss."),
    lambda_rec: float = typer.Option(_default("lambda_rec"), help="Weight of the cycle reconstruction loss."),
    lambda_gp: float = typer.Option(_default("lambda_gp"), help="Weight of the gradient penalty."),
    lambda_mask: float = typer.Option(_default("lambda_mask"), help="Weight of the attention-mask regulariser."),
    balance: bool = typer.Option(_default("balance"), "--balance",
                                 help="Class-balanced sampling: rare expressions come up as often as common ones."),
    val_subjects: str = typer.Option(_default("val_subjects"),
                                     help="Held-out subjects: auto (5%), a number, a comma list of ids, or 0."),
    align: bool = typer.Option(_default("align"), "--align/--no-align",
                               help="--no-align: the expression folders hold cropped faces; read them as they are."),
    template: TemplateChoice = typer.Option(TemplateChoice(_default("template")),
                                            help="Alignment template for raw folders."),
    cache_dir: Optional[Path] = typer.Option(
        None, envvar="EXAUG_CACHE", show_default=False,
        help="Cache folder; aligned raw folders go to its aligned/ (default: ~/.cache/exaug)."),
    sample_every: int = typer.Option(_default("sample_every"), help="Steps between sample sheets."),
    save_every: int = typer.Option(_default("save_every"), help="Steps between checkpoints."),
    log_every: int = typer.Option(_default("log_every"), help="Steps between metrics.jsonl rows."),
    keep: int = typer.Option(_default("keep"), help="Checkpoints kept (the newest)."),
    device: DeviceChoice = DEVICE,
    seed: int = typer.Option(_default("seed"), help="Seed for the split, the sampling and the weights."),
    workers: int = typer.Option(_default("workers"), help="Data loading processes per training process."),
    amp: AmpChoice = typer.Option(AmpChoice(_default("amp")),
                                  help="Mixed precision on CUDA (CPU always trains in fp32)."),
) -> None:
    """Train the expression GAN (StarGAN with an attention mask) on labelled faces."""
    if resume is not None:
        if data is not None or output is not None:
            raise ExaugError("--resume RUN_DIR continues a run with its saved options: give no DATA or --output")
        extend = {} if iters is None else {"iters": iters}
        config = TrainConfig.load(resume, device=device.value, workers=workers, **extend)
    elif data is None or output is None:
        raise ExaugError("give DATA and --output RUN_DIR (or --resume RUN_DIR)")
    else:
        config = TrainConfig(
            data=str(data), output=str(output), image_size=image_size, channels=channels, conv_dim=conv_dim,
            repeat_num=repeat_num, attention=attention, iters=_default("iters") if iters is None else iters,
            batch_size=batch_size, lr=lr,
            n_critic=n_critic, lambda_cls=lambda_cls, lambda_rec=lambda_rec, lambda_gp=lambda_gp,
            lambda_mask=lambda_mask, balance=balance, val_subjects=val_subjects, align=align,
            template=template.value, cache_dir=None if cache_dir is None else str(cache_dir),
            sample_every=sample_every, save_every=save_every, log_every=log_every, keep=keep,
            device=device.value, seed=seed, workers=workers, amp=amp.value)
    model = train_model(config, resume=resume is not None)
    console.print(f"model: {model}", highlight=False)
