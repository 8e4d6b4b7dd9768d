"""Holes found by probing exaug as a careless or hostile user would (issue 14): each stays closed.

Nothing is lost, nothing outside the input is read into an output, and every failure is one line.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from exaug.errors import ImageLoadError, InputError
from exaug.io import images
from exaug.io.images import load_image
from exaug.io.sources import discover_sources, load_source


@pytest.fixture(scope="module")
def photo(people_dir: Path) -> bytes:
    """A real face photo, small enough that detecting it is quick."""
    image = Image.open(people_dir / "paul_rudd" / "1.jpg").convert("RGB")
    image.thumbnail((160, 160))
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=90)
    return encoded.getvalue()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of a few bytes that claims ``width x height`` pixels: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------ input folders


def test_symlink_loop_walks_each_folder_once(tmp_path, photo):
    for rel in ["alice/1.jpg", "alice/2.jpg", "bob/3.jpg"]:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(photo)
    (tmp_path / "alice" / "loop").symlink_to("..")
    (tmp_path / "bob" / "again").symlink_to(tmp_path / "bob")
    assert [source.relpath for source in discover_sources(tmp_path)] == ["alice/1.jpg", "alice/2.jpg", "bob/3.jpg"]


def test_unlistable_subfolder_is_a_failed_source(tmp_path, photo, monkeypatch):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "1.jpg").write_bytes(photo)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "2.jpg").write_bytes(photo)
    scandir = os.scandir

    def refusing(path=".", *args):
        if Path(path).name == "locked":  # what chmod 000 does to a non-root user
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", refusing)
    sources = discover_sources(tmp_path)
    assert [source.relpath for source in sources] == ["alice/1.jpg", "locked/"]
    with pytest.raises(ImageLoadError, match="folder cannot be read .Permission denied"):
        load_source(sources[1])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 folders")
def test_chmod_000_subfolder_is_reported(tmp_path, photo):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "1.jpg").write_bytes(photo)
    (tmp_path / "locked").mkdir(mode=0)
    try:
        assert [source.error is not None for source in discover_sources(tmp_path)] == [False, True]
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_unreadable_input_folder_is_an_error(tmp_path, monkeypatch):
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".", *a: (_ for _ in ()).throw(PermissionError(
        13, "Permission denied", str(path))) if Path(path) == tmp_path else scandir(path, *a))
    with pytest.raises(InputError, match="folder cannot be read"):
        discover_sources(tmp_path)


def test_non_utf8_file_name_is_recorded_with_escapes(tmp_path, photo):
    raw = os.fsencode(tmp_path) + b"/\xff\xfe.jpg"
    with open(raw, "wb") as handle:
        handle.write(photo)
    (source,) = discover_sources(tmp_path)
    assert source.relpath == "\\xff\\xfe.jpg" and source.identity == "\\xff\\xfe"
    source.relpath.encode("utf-8")  # storable anywhere
    assert load_source(source).shape[2] == 3  # and the real file is still read


# ------------------------------------------------------------------------------------------- images


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    with pytest.raises(ImageLoadError, match="20000x20000 pixels is over the limit .* --max-pixels"):
        load_image(bomb)


def test_pixel_limit_can_be_raised_and_lowered(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    assert load_image(path).shape == (20, 30, 3)
    with pytest.raises(ImageLoadError, match="30x20 pixels is over the limit of 500"):
        load_image(path, max_pixels=500)
    assert images.MAX_PIXELS < 20_000 * 20_000 <= 10 * images.MAX_PIXELS


def test_out_of_memory_fails_one_image(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)

    def exhausted(self):
        raise MemoryError
    monkeypatch.setattr(Image.Image, "load", exhausted)
    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)
    with pytest.raises(ImageLoadError, match="not enough memory"):
        load_image(path)


# ----------------------------------------------------------------------------------------- training


def _tiny_run(data: Path, run_dir: Path, iters: int):
    from exaug.train import TrainConfig
    return TrainConfig(data=str(data), output=str(run_dir), image_size=64, channels=1, conv_dim=8, repeat_num=1,
                       iters=iters, batch_size=4, n_critic=2, align=False, sample_every=100, save_every=2,
                       log_every=1, workers=0, device="cpu", val_subjects="2", n_samples=2)


def test_resume_survives_an_emptied_config_and_a_torn_metrics_line(ckplus_dir, tmp_path):
    from exaug.train import TrainConfig, train

    run_dir = tmp_path / "run"
    train(_tiny_run(ckplus_dir, run_dir, iters=2))
    (run_dir / "config.json").write_bytes(b"")  # killed while config.json was being rewritten
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "lr": 0.0')  # killed mid-line
    train(TrainConfig.load(run_dir, iters=4), resume=True)
    assert TrainConfig.load(run_dir).iters == 4  # config.json written again, whole
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [step for step in steps if step] == sorted(steps) and steps[-1] == 4


def test_config_is_saved_atomically(tmp_path, monkeypatch):
    from exaug.io import atomic
    config = _tiny_run(tmp_path, tmp_path, iters=2)
    config.save(tmp_path)
    before = (tmp_path / "config.json").read_text()

    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path, tmp_path, iters=9).save(tmp_path)
    assert (tmp_path / "config.json").read_text() == before


# -------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_with_zeroed_bytes_is_refused(test_checkpoint, tmp_path):
    from exaug.errors import ExaugError
    from exaug.model.checkpoint import load_generator
    data = bytearray(test_checkpoint.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)  # 4 KB zeroed inside the weights
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ExaugError, match="damaged checkpoint .* fails its checksum"):
        load_generator(damaged)


@pytest.mark.parametrize("field, value", [
    ("image_size", "64"), ("channels", 2), ("expressions", "happy"), ("expressions", ["happy"] * 8),
    ("model", {"image_size": "big"}), ("model", {"image_size": 64, "channels": 1, "conv_dim": -3}),
    ("model", {"attention": "yes"}), ("template", 7), ("steps", -1), ("data", [1]), (None, [1, 2]),
])
def test_checkpoint_metadata_of_the_wrong_type_is_one_line(test_checkpoint, tmp_path, field, value):
    import torch
    from exaug.errors import ExaugError
    from exaug.model.generator import ExpressionGenerator
    payload = torch.load(test_checkpoint, weights_only=True)
    meta = json.loads(payload["meta"])
    if field is None:
        meta = value
    elif field == "model" and "image_size" in value and isinstance(value["image_size"], int):
        meta["model"] = value
    elif field == "model":
        meta["model"] = {**meta["model"], **value}
    else:
        meta[field] = value
    payload["meta"] = json.dumps(meta)
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(ExaugError, match=f"^{path}: damaged exaug checkpoint .metadata"):
        ExpressionGenerator.load(path, "cpu").generate(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "happy")


def test_checkpoint_weights_of_the_wrong_type_are_one_line(test_checkpoint, tmp_path):
    import torch
    from exaug.errors import ExaugError
    from exaug.model.checkpoint import load_generator
    payload = torch.load(test_checkpoint, weights_only=True)
    payload["generator"] = [1, 2, 3]
    torch.save(payload, tmp_path / "odd.pt")
    with pytest.raises(ExaugError, match="'generator' is not a set of named tensors"):
        load_generator(tmp_path / "odd.pt")


# ---------------------------------------------------------------------------------- the command line


def _exaug(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exaug", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, **options)


def _one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, and a single ``error:`` line holding each of ``expected``, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert all(text in line for text in expected), line
    return line


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory, photo) -> Path:
    """Copies of one small photo: two commit batches, quick to detect."""
    folder = tmp_path_factory.mktemp("many")
    for number in range(24):
        (folder / f"p{number:02d}.jpg").write_bytes(photo)
    return folder


@pytest.mark.parametrize("command", ["align", "augment"])
def test_ctrl_c_stops_the_threads_exits_130_and_resumes(command, many_photos, test_checkpoint, tmp_path):
    output = tmp_path / "out.h5"
    args = [command, many_photos, "-o", output, "-q", "--device", "cpu", "--workers", "2"]
    if command == "augment":
        args += ["--model", test_checkpoint, "--emotion", "happy"]
    process = subprocess.Popen([sys.executable, "-m", "exaug", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not output.exists():  # the first batch is committed: the run is mid-way
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        printed = process.communicate(timeout=300)[0]
    finally:
        process.kill()
    assert process.returncode == 130 and "terminate called" not in printed and "Traceback" not in printed, printed
    assert "run the same command again to resume" in printed
    resumed = _exaug(*args)
    assert resumed.returncode == 0 and "already done (resumed)" in resumed.stdout + resumed.stderr, resumed.stderr
    from exaug.io.store import read_faces
    with read_faces(output) as table:
        assert sorted(set(table.sources)) == [f"p{number:02d}.jpg" for number in range(24)]
        assert len(table) == 24 * (2 if command == "augment" else 1)
