"""Shared fixtures: the real data beside the checkout, and a small trained test checkpoint."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EXAUG_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def data_path(*parts: str) -> Path:
    """A path under ../shared/data; a missing one fails the test loudly instead of skipping it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data missing: {path} (set EXAUG_DATA to the folder holding faces/, video/, expressions/)")
    return path


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return data_path("faces")


@pytest.fixture(scope="session")
def people_dir() -> Path:
    return data_path("faces", "people")


@pytest.fixture(scope="session")
def multiface_jpg() -> Path:
    return data_path("faces", "groups", "multiface.jpg")


@pytest.fixture(scope="session")
def ckplus_dir() -> Path:
    return data_path("expressions", "ckplus128")


@pytest.fixture(scope="session")
def video_clip() -> Path:
    return data_path("video", "street_1080p_audio.mp4")


def ck_subject_folder(ckplus_dir: Path, folder: Path, subjects: int) -> Path:
    """``folder``/faces: CK+'s expression folders holding only the first ``subjects`` people (by
    name), as links to the shared files."""
    chosen = sorted({path.name[:4] for path in (ckplus_dir / "neutral").glob("S*.png")})[:subjects]
    for expression_folder in ckplus_dir.iterdir():
        if expression_folder.is_dir():
            for image in expression_folder.glob("S*.png"):
                if image.name[:4] in chosen:
                    (folder / "faces" / expression_folder.name).mkdir(parents=True, exist_ok=True)
                    (folder / "faces" / expression_folder.name / image.name).symlink_to(image)
    return folder / "faces"


def align_ck_subjects(ckplus_dir: Path, folder: Path, subjects: int) -> Path:
    """CK+ neutral and peak frames of the first ``subjects`` people (by name), aligned at 128 px with
    meshes into ``folder``/ck128.h5: the input of load_pairs, the geometry model and the floor."""
    from exaug.faces.detect import DetectionOptions
    from exaug.pipelines.align import AlignOptions, align_dataset

    faces = ck_subject_folder(ckplus_dir, folder, subjects)
    output = folder / "ck128.h5"
    options = AlignOptions(device="cpu", mesh=True, detection=DetectionOptions(faces="largest"))
    align_dataset(faces, output, options, show_progress=False)
    return output


def detail(faces: torch.Tensor, boxes=None) -> torch.Tensor:
    """Laplacian energy (what blurring removes) of each uint8 ``(N, 3, H, W)`` face's luma, as the
    scorecard measures it, the one-pixel border left out; with ``boxes`` ((N, 4) x0, y0, x1, y1 in
    pixels) only inside each face's box."""
    from exaug.pipelines.scorecard import laplacian_energy

    count, _, height, width = faces.shape
    inside = torch.zeros(count if boxes is not None else 1, 1, height, width)
    if boxes is None:
        inside[..., 1:-1, 1:-1] = 1
    else:
        for mask, (x0, y0, x1, y1) in zip(inside, [[int(round(float(v))) for v in box] for box in boxes]):
            mask[:, max(y0, 1):min(y1, height - 1), max(x0, 1):min(x1, width - 1)] = 1
    return laplacian_energy(faces, inside)


# ``python -m exaug`` started as a terminal starts it: Ctrl-C raises KeyboardInterrupt. A shell that runs the
# test suite as a background job (``cmd &``) hands its children SIGINT ignored, and Python keeps an ignored
# SIGINT ignored, so without this the Ctrl-C tests would pass or fail depending on how pytest was launched.
EXAUG_AS_IN_A_TERMINAL = ["-c", "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                          "runpy.run_module('exaug', run_name='__main__', alter_sys=True)"]


def interrupt_when(process, ready, timeout: float) -> str:
    """Wait (at most ``timeout`` s, the process still running) until ``ready()``, then send Ctrl-C;
    the process's output."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    return process.communicate(timeout=timeout)[0]


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def test_checkpoint(tmp_path_factory) -> Path:
    """A tiny luma generator (64 px) trained for a few steps on CK+ crops: real weights in seconds.

    Its faces are not convincing, but every path a real model takes (luma with kept chroma, the
    source estimator, fp32 on CPU) runs through it.
    """
    from exaug.train import TrainConfig, train

    run = tmp_path_factory.mktemp("checkpoint") / "run"
    config = TrainConfig(data=str(data_path("expressions", "ckplus128")), output=str(run), image_size=64,
                         channels=1, conv_dim=8, repeat_num=1, iters=4, batch_size=4, n_critic=2, align=False,
                         sample_every=100, save_every=100, log_every=1, workers=0, device="cpu",
                         val_subjects="2", n_samples=2)
    return train(config)
