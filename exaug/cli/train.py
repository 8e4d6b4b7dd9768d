"""``exaug train DATA [-o RUN_DIR]`` and ``exaug train --resume RUN_DIR``; under torchrun too."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from exaug.cli.common import DEVICE, DeviceChoice, TemplateChoice, library_defaults
from exaug.errors import ExaugError
from exaug.io.outputs import default_output
from exaug.model.networks import image_sizes
from exaug.pipelines.training import is_guided_run, resume_guided_model, train_guided_model, train_model
from exaug.progress import console
from exaug.train import TrainConfig
from exaug.train.guided import GuidedTrainConfig


ArchChoice = Enum("ArchChoice", {"stargan": "stargan", "guided": "guided"}, type=str)  # --arch


class AmpChoice(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


DEFAULT = library_defaults(TrainConfig)


def train_command(
    data: Optional[Path] = typer.Argument(
        None, metavar="DATA", show_default=False,
        help="Aligned faces from `exaug align` (.h5 or folder), or a folder with one sub-folder per expression "
             "(aligned first; the result is cached)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="RUN_DIR",
                                          help="Run folder: config, metrics.jsonl, samples/, checkpoints/, latest "
                                               "(default: DATA's name + .run in the current folder)."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="RUN_DIR",
        help="Continue this run from its last checkpoint with its saved options (only --device, --workers and "
             "--iters apply; a larger --iters extends a run, even a finished one)."),
    image_size: int = typer.Option(DEFAULT["image_size"], help=f"Face size in pixels: {image_sizes()}."),
    channels: int = typer.Option(DEFAULT["channels"],
                                 help="3 (RGB) or 1 (luma: for greyscale data; still edits colour faces)."),
    conv_dim: int = typer.Option(DEFAULT["conv_dim"], help="Width of G's and D's first layer."),
    repeat_num: int = typer.Option(DEFAULT["repeat_num"], help="Residual blocks in G."),
    attention: bool = typer.Option(DEFAULT["attention"], "--attention/--no-attention",
                                   help="GANimation attention mask: keep the pixels an expression does not touch."),
    iters: Optional[int] = typer.Option(
        None, show_default=False,
        help=f"Discriminator iterations (G trains every --n-critic), default {DEFAULT['iters']}; --arch guided: "
             f"painter steps, default {GuidedTrainConfig.steps}. With --resume: the new total; the learning rate "
             "follows the new schedule."),
    batch_size: int = typer.Option(DEFAULT["batch_size"], min=1, help="Faces per step and process."),
    lr: float = typer.Option(DEFAULT["lr"], help="Adam learning rate; decays linearly over the second half."),
    n_critic: int = typer.Option(DEFAULT["n_critic"], help="D iterations per G iteration."),
    lambda_cls: float = typer.Option(DEFAULT["lambda_cls"], help="Weight of the expression classification loss."),
    lambda_rec: float = typer.Option(DEFAULT["lambda_rec"], help="Weight of the cycle reconstruction loss."),
    lambda_gp: float = typer.Option(DEFAULT["lambda_gp"], help="Weight of the gradient penalty."),
    lambda_mask: float = typer.Option(DEFAULT["lambda_mask"], help="Weight of the attention-mask regulariser."),
    balance: bool = typer.Option(DEFAULT["balance"], "--balance",
                                 help="Class-balanced sampling: rare expressions come up as often as common ones."),
    val_subjects: str = typer.Option(DEFAULT["val_subjects"],
                                     help="Held-out subjects: auto (5% at random; --arch guided: every sixth by "
                                          "name), a number, a comma list of ids, or 0; --arch guided also "
                                          "takes K/F, fold K of F (every F-th by name from the K-th, from 0)."),
    align: bool = typer.Option(DEFAULT["align"], "--align/--no-align",
                               help="--no-align: the expression folders hold cropped faces; read them as they are."),
    template: TemplateChoice = typer.Option(TemplateChoice(DEFAULT["template"]),
                                            help="Alignment template for raw folders."),
    cache_dir: Optional[Path] = typer.Option(
        None, envvar="EXAUG_CACHE", show_default=False,
        help="Cache folder; aligned raw folders go to its aligned/ (default: ~/.cache/exaug)."),
    sample_every: int = typer.Option(DEFAULT["sample_every"], help="Steps between sample sheets."),
    save_every: int = typer.Option(DEFAULT["save_every"], help="Steps between checkpoints."),
    log_every: int = typer.Option(DEFAULT["log_every"], help="Steps between metrics.jsonl rows."),
    keep: int = typer.Option(DEFAULT["keep"], help="Checkpoints kept (the newest)."),
    device: DeviceChoice = DEVICE,
    seed: int = typer.Option(DEFAULT["seed"], help="Seed for the split, the sampling and the weights."),
    workers: int = typer.Option(DEFAULT["workers"], min=0, help="Data loading processes per training process."),
    amp: AmpChoice = typer.Option(AmpChoice(DEFAULT["amp"]),
                                  help="Mixed precision on CUDA (CPU always trains in fp32)."),
    arch: ArchChoice = typer.Option(
        ArchChoice.stargan,
        help="stargan: the label-conditioned GAN (these options); guided: the geometry-guided generator, learnt "
             "from paired CK+-style sequences (takes DATA, -o, --iters, --val-subjects, --seed, --device; "
             "--resume RUN_DIR continues one)."),
) -> None:
    """Train an expression generator on labelled faces: StarGAN (attention mask) or geometry-guided."""
    if data is not None and output is None and resume is None:
        output = default_output(data, "run", "")
    if resume is not None and is_guided_run(resume):
        if data is not None or output is not None:
            raise ExaugError("--resume RUN_DIR continues a run with its saved options: give no DATA or --output")
        console.print(f"model: {resume_guided_model(resume, steps=iters, device=device.value)}", highlight=False)
        return
    if arch is ArchChoice.guided:
        if resume is not None or data is None or output is None:
            raise ExaugError("--arch guided takes DATA (and --output RUN_DIR; --resume RUN_DIR alone continues a run)")
        config = GuidedTrainConfig(steps=GuidedTrainConfig.steps if iters is None else iters, seed=seed)
        model = train_guided_model(data, output, config, val_subjects=val_subjects, device=device.value,
                                   cache_dir=None if cache_dir is None else str(cache_dir))
        console.print(f"model: {model}", highlight=False)
        return
    if resume is not None:
        if data is not None or output is not None:
            raise ExaugError("--resume RUN_DIR continues a run with its saved options: give no DATA or --output")
        extend = {} if iters is None else {"iters": iters}
        config = TrainConfig.load(resume, device=device.value, workers=workers, **extend)
    elif data is None or output is None:
        raise ExaugError("give DATA (and --output RUN_DIR), or --resume RUN_DIR")
    else:
        config = TrainConfig(
            data=str(data), output=str(output), image_size=image_size, channels=channels, conv_dim=conv_dim,
            repeat_num=repeat_num, attention=attention, iters=DEFAULT["iters"] if iters is None else iters,
            batch_size=batch_size, lr=lr,
            n_critic=n_critic, lambda_cls=lambda_cls, lambda_rec=lambda_rec, lambda_gp=lambda_gp,
            lambda_mask=lambda_mask, balance=balance, val_subjects=val_subjects, align=align,
            template=template.value, cache_dir=None if cache_dir is None else str(cache_dir),
            sample_every=sample_every, save_every=save_every, log_every=log_every, keep=keep,
            device=device.value, seed=seed, workers=workers, amp=amp.value)
    model = train_model(config, resume=resume is not None)
    console.print(f"model: {model}", highlight=False)
