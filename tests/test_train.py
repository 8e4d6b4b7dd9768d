"""Training on real CK+ faces: losses, run files, resume, Ctrl-C, DDP, subject-disjoint validation.

Models here are tiny (64px, width 8, one residual block) so a step takes milliseconds on a CPU; what
is checked is the machinery (files, schedule, determinism, signals, processes), not image quality.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAUG_AS_IN_A_TERMINAL, ck_subject_folder, interrupt_when
from exaug.errors import ExaugError, InputError
from exaug.expressions import EXPRESSIONS
from exaug.io.sheets import HEADER_HEIGHT
from exaug.model import ExpressionGenerator, load_state
from exaug.pipelines.training import train_model
from exaug.train import TrainConfig, TrainingInterrupted, train
from exaug.train.faceset import TrainSampler, load_faces, split_validation, subject_of

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=64, channels=1, conv_dim=8, repeat_num=1, batch_size=4, n_critic=2, align=False,
             workers=0, device="cpu", n_samples=3, log_every=1)
SMALL_ARGS = ["--image-size", "64", "--channels", "1", "--conv-dim", "8", "--repeat-num", "1", "--batch-size", "4",
              "--n-critic", "2", "--no-align", "--workers", "0", "--device", "cpu", "--log-every", "1"]
LOSSES = ("d_loss_real", "d_loss_fake", "d_loss_cls", "d_loss_gp", "g_loss_fake", "g_loss_cls", "g_loss_rec",
          "g_loss_mask")


def _config(data: Path, output: Path, **options) -> TrainConfig:
    return TrainConfig(data=str(data), output=str(output), **{**SMALL, **options})


def _metrics(run_dir: Path) -> list[dict]:
    """Training rows (the validation rows carry no losses)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "d_loss" in row]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def ck_faces(ckplus_dir):
    return load_faces(ckplus_dir, image_size=SMALL["image_size"], crops=True)


def test_training_writes_metrics_samples_and_checkpoints(ckplus_dir, tmp_path):
    run_dir = tmp_path / "run"
    model_path = train(_config(ckplus_dir, run_dir, iters=4, sample_every=2, save_every=1, keep=2))

    rows = _metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["it_s"] > 0 and row["lr"] > 0
        assert all(math.isfinite(value) for value in row.values())
    assert set(LOSSES) <= set(rows[1]) and set(LOSSES) <= set(rows[3])  # G trains every n_critic = 2

    sheets = sorted((run_dir / "samples").glob("*.png"))
    assert [p.name for p in sheets] == ["step-0000002.png", "step-0000004.png"]
    with Image.open(sheets[-1]) as sheet:
        assert sheet.size == (9 * 64, HEADER_HEIGHT + 3 * 64) and sheet.mode == "RGB"

    latest = json.loads((run_dir / "latest").read_text())
    assert latest["step"] == 4 and run_dir / latest["generator"] == model_path
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-0000003.generator.pt", "step-0000003.state.pt", "step-0000004.generator.pt", "step-0000004.state.pt"]
    model = ExpressionGenerator.load(run_dir, "cpu")
    meta = model.meta
    assert meta["steps"] == 4 and meta["mode"] == "luma" and model.expressions == EXPRESSIONS
    assert meta["data"]["images"] + meta["data"]["validation"]["images"] == 920
    assert meta["data"]["subjects"] + meta["data"]["validation"]["subjects"] == 123
    assert meta["training"]["processes"] == 1 and meta["exaug_version"]
    assert load_state(run_dir)["step"] == 4
    assert TrainConfig.load(run_dir) == _config(ckplus_dir, run_dir, iters=4, sample_every=2, save_every=1, keep=2)

    with pytest.raises(ExaugError, match="--resume"):
        train(_config(ckplus_dir, run_dir, iters=4))


def test_resume_continues_the_step_count_and_schedule(ckplus_dir, tmp_path):
    options = dict(iters=8, sample_every=100, save_every=100)
    train(_config(ckplus_dir, tmp_path / "whole", **options))

    def interrupt_at_step_3(step: int, losses: dict[str, float]) -> None:
        if step == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: the loop finishes the step and saves

    with pytest.raises(TrainingInterrupted) as stopped:
        train(_config(ckplus_dir, tmp_path / "split", **options), on_step=interrupt_at_step_3)
    assert stopped.value.step == 3 and stopped.value.checkpoint.is_file()
    assert json.loads((tmp_path / "split" / "latest").read_text())["step"] == 3

    train(TrainConfig.load(tmp_path / "split"), resume=True)
    whole, split = _metrics(tmp_path / "whole"), _metrics(tmp_path / "split")
    assert [row["step"] for row in split] == list(range(1, 9))
    assert [row["lr"] for row in split] == [row["lr"] for row in whole]
    assert split[-1]["lr"] < split[0]["lr"]  # the decay of the second half happened
    for row_whole, row_split in zip(whole, split):  # the same batches, flips and targets: same losses
        assert row_split["d_loss"] == pytest.approx(row_whole["d_loss"], rel=1e-4)
    faces = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in
                                       sorted((ckplus_dir / "happy").glob("*.png"))[:2]])).permute(0, 3, 1, 2)
    faces = torch.nn.functional.interpolate(faces.float(), size=(64, 64), antialias=True, mode="bilinear").byte()
    a, b = (ExpressionGenerator.load(tmp_path / name, "cpu").generate(faces, "sad") for name in ("whole", "split"))
    assert (a.int() - b.int()).abs().max() <= 1


def test_a_larger_iters_extends_a_finished_run(ckplus_dir, tmp_path):
    from exaug.cli.train import train_command

    app = typer.Typer()
    app.command()(train_command)
    run_dir = tmp_path / "run"
    train(_config(ckplus_dir, run_dir, iters=4, sample_every=100, save_every=100))
    first = _metrics(run_dir)
    assert first[-1]["lr"] < first[0]["lr"]  # decayed towards the end of the first schedule

    result = CliRunner().invoke(app, ["--resume", str(run_dir), "--iters", "8"])
    assert result.exit_code == 0, result.output
    rows = _metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert rows[:4] == first
    assert rows[4]["lr"] == first[0]["lr"] and rows[-1]["lr"] < rows[4]["lr"]  # the new schedule, from full rate
    assert TrainConfig.load(run_dir).iters == 8 and load_state(run_dir)["step"] == 8

    undo = CliRunner().invoke(app, ["--resume", str(run_dir), "--iters", "5"])
    assert isinstance(undo.exception, ExaugError) and "8 iterations" in str(undo.exception)
    assert TrainConfig.load(run_dir).iters == 8


@pytest.mark.slow
def test_sigint_leaves_a_loadable_checkpoint_and_exits_130(ckplus_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, *EXAUG_AS_IN_A_TERMINAL, "train", str(ckplus_dir), "-o", str(run_dir), *SMALL_ARGS,
               "--iters", "100000", "--save-every", "100000", "--sample-every", "100000"]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = interrupt_when(process, lambda: (run_dir / "metrics.jsonl").exists() and len(_metrics(run_dir)) >= 2,
                                120)
    finally:
        process.kill()
    assert process.returncode == 130, output
    step = json.loads((run_dir / "latest").read_text())["step"]
    assert step >= 2 and "interrupted" in output
    assert ExpressionGenerator.load(run_dir, "cpu").meta["steps"] == step
    assert load_state(run_dir)["step"] == step


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(ckplus_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "exaug", "train",
               str(ckplus_dir), "-o", str(run_dir), *SMALL_ARGS, "--iters", "4", "--save-every", "2",
               "--sample-every", "4"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (done.stdout + done.stderr).count("model: ") == 2  # both ranks finished
    assert [row["step"] for row in _metrics(run_dir)] == [1, 2, 3, 4]  # written once, by rank 0
    assert all(row["images_s"] > 0 for row in _metrics(run_dir))
    meta = ExpressionGenerator.load(run_dir, "cpu").meta
    assert meta["training"]["processes"] == 2 and meta["steps"] == 4
    assert len(list((run_dir / "samples").glob("*.png"))) == 1


@pytest.mark.slow
def test_raw_folder_is_aligned_once_and_cached(ckplus_dir, tmp_path):
    raw = tmp_path / "raw"
    for name in ("happy", "sad", "neutral"):
        (raw / name).mkdir(parents=True)
        for path in sorted((ckplus_dir / name).glob("*.png"))[:4]:
            (raw / name / path.name).write_bytes(path.read_bytes())
    options = dict(align=True, cache_dir=str(tmp_path / "cache"), iters=1, n_samples=2)
    with pytest.raises(InputError, match="not aligned faces"):  # training reads faces; the pipeline aligns
        train(_config(raw, tmp_path / "refused", **options))
    train_model(_config(raw, tmp_path / "first", **options))
    cached = list((tmp_path / "cache" / "aligned").glob("*.h5"))
    assert len(cached) == 1
    model = ExpressionGenerator.load(tmp_path / "first", "cpu")
    assert model.template == "exaug" and model.meta["data"]["source"] == str(raw)
    assert model.meta["data"]["images"] + model.meta["data"]["validation"]["images"] == 12
    train_model(_config(cached[0], tmp_path / "second", **options))  # an aligned table trains as it is
    assert list((tmp_path / "cache" / "aligned").glob("*.h5")) == cached


def test_a_refused_split_leaves_no_run_folder_and_a_given_folder_as_it_was(ckplus_dir, tmp_path, test_checkpoint):
    """--val-subjects the data cannot meet (more people than it has, an unknown or negative id), and
    an augment output of one person (auto would hold out everyone), are refused before the run
    folder is made: no config.json is left, and a folder that was there keeps only its own files."""
    from exaug.cli.train import train_command
    from exaug.io.digest import file_hash
    from exaug.model.generator import ExpressionGenerator
    from exaug.pipelines.augment import AugmentOptions, augment_dataset

    app = typer.Typer()
    app.command()(train_command)
    faces = ck_subject_folder(ckplus_dir, tmp_path, 4)
    augmented = tmp_path / "augmented.h5"
    augment_dataset(ck_subject_folder(ckplus_dir, tmp_path / "one", 1) / "neutral", augmented, ExpressionGenerator.load(test_checkpoint, "cpu"),
                    file_hash(test_checkpoint), AugmentOptions(expressions=["happy", "sad"]), show_progress=False)
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "notes.txt").write_text("mine")
    for data, spec, reason in ((faces, "500", "only 4 subjects"), (faces, "S000", "unknown subjects S000"),
                               (faces, "-3", "unknown subjects -3"), (augmented, "auto", "only 1 subjects")):
        for run in (tmp_path / "run", tmp_path / "given"):
            result = CliRunner().invoke(app, [str(data), "-o", str(run), *SMALL_ARGS, "--iters", "2",
                                              "--val-subjects", spec])
            assert isinstance(result.exception, ExaugError) and reason in str(result.exception), result.output
            assert not (tmp_path / "run").exists()
            assert [path.name for path in (tmp_path / "given").iterdir()] == ["notes.txt"]


def test_validation_holds_out_whole_subjects(ck_faces):
    train_pos, val_pos, note = split_validation(ck_faces, "auto", seed=0)
    train_subjects, val_subjects = set(ck_faces.subjects[train_pos]), set(ck_faces.subjects[val_pos])
    assert not train_subjects & val_subjects and len(val_subjects) == 6 and "held-out" in note
    assert len(train_pos) + len(val_pos) == len(ck_faces)
    assert split_validation(ck_faces, "auto", seed=0)[1].tolist() == val_pos.tolist()  # deterministic
    assert len(set(ck_faces.subjects[split_validation(ck_faces, "3", seed=1)[1]])) == 3
    assert set(ck_faces.subjects[split_validation(ck_faces, "S005,S010", seed=0)[1]]) == {"S005", "S010"}
    with pytest.raises(ExaugError, match="X123"):
        split_validation(ck_faces, "S005,X123", seed=0)
    assert len(split_validation(ck_faces, "0", seed=0)[1]) == 0
    anonymous = replace(ck_faces, subjects=np.full(len(ck_faces), "", dtype=object))
    train_pos, val_pos, note = split_validation(anonymous, "auto", seed=0)
    assert "unknown" in note and len(val_pos) == round(0.05 * len(ck_faces))


def test_subject_ids():
    assert subject_of("happy/S005_001_00000011.png", "") == "S005"
    assert subject_of("happy/alice/3.jpg", "alice") == "alice"
    assert subject_of("img_001.jpg", "img_001") == ""  # a flat folder's stem is no subject
    assert subject_of("happy/x.jpg", "happy") == ""


def test_train_batches_resume_split_ranks_and_balance(ck_faces):
    labels = ck_faces.labels
    stream = iter(TrainSampler(labels, 16, seed=0))
    first = [next(stream) for _ in range(200)]
    resumed = iter(TrainSampler(labels, 16, seed=0, start_step=120))
    assert all(np.array_equal(next(resumed), batch) for batch in first[120:])

    per_rank = [iter(TrainSampler(labels, 8, seed=0, rank=rank, world=2)) for rank in range(2)]
    steps = len(labels) // 16
    seen = [np.concatenate([next(stream) for _ in range(steps)]) for stream in per_rank]
    assert not set(seen[0]) & set(seen[1])  # one epoch: the ranks see different faces

    balanced = iter(TrainSampler(labels, 64, seed=0, balance=True))
    counts = np.bincount(labels[np.concatenate([next(balanced) for _ in range(100)])], minlength=8)
    assert counts.min() > 0.7 * counts.mean()  # contempt (18 faces) as common as neutral (593)


def test_cli_checks_its_arguments(tmp_path):
    from exaug.cli.train import train_command

    app = typer.Typer()
    app.command()(train_command)
    runner = CliRunner()
    both = runner.invoke(app, ["data", "-o", str(tmp_path), "--resume", str(tmp_path)])
    assert isinstance(both.exception, ExaugError) and "--resume" in str(both.exception)
    neither = runner.invoke(app, [])
    assert isinstance(neither.exception, ExaugError)
    missing = runner.invoke(app, ["--resume", str(tmp_path / "nothing")])
    assert isinstance(missing.exception, ExaugError) and "config.json" in str(missing.exception)
    help_text = runner.invoke(app, ["--help"]).output
    assert "--val-subjects" in help_text and "--balance" in help_text
    words = " ".join(help_text.replace("│", " ").split())  # the help's table, its cells' lines joined
    assert "(G trains every --n-critic), default 200000; --arch guided: painter steps, default 5000." in words
    assert "Face size in pixels: 32, 64, 128, 256 or 512." in words  # the sizes the model takes, no fewer
    for option, value, message in (("--image-size", "100", "--image-size must be one of 32, 64, 128, 256 or 512"),
                                   ("--conv-dim", "0", "--conv-dim must be at least 1, not 0"),
                                   ("--repeat-num", "-1", "--repeat-num must be 0 or more, not -1"),
                                   ("--channels", "2", "--channels must be 1 (luma) or 3 (RGB), not 2")):
        refused = runner.invoke(app, ["data", "-o", str(tmp_path / "run"), option, value])
        assert isinstance(refused.exception, ExaugError) and str(refused.exception).startswith(message)
