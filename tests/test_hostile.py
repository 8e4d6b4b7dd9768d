"""Holes found by probing exaug as a careless or hostile user would (issue 14): each stays closed.

Nothing is lost, nothing outside the input is read into an output, and every failure is one line.
"""

from __future__ import annotations

import io
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import EXAUG_AS_IN_A_TERMINAL, REPO, interrupt_when
from exaug.errors import ExaugError, ImageLoadError, InputError
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


def test_a_single_unreadable_image_is_an_error_not_an_empty_output(tmp_path, photo):
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageLoadError, match="text.jpg"):
        discover_sources(tmp_path / "text.jpg")
    (tmp_path / "photo.jpg").write_bytes(photo)
    assert [source.relpath for source in discover_sources(tmp_path / "photo.jpg")] == ["photo.jpg"]
    with pytest.raises(ImageLoadError, match="photo.jpg"):  # the pixel limit, as for a folder's images
        discover_sources(tmp_path / "photo.jpg", max_pixels=100)


def test_an_output_folder_inside_its_input_is_never_read_back_as_photos(tmp_path, photo, test_checkpoint):
    from exaug.io.store import read_faces
    from exaug.model.generator import ExpressionGenerator
    from exaug.pipelines.augment import AugmentOptions, augment_dataset
    photos = tmp_path / "photos"
    for rel in ("alice/1.jpg", "bob/2.jpg"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(photo)
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    options = AugmentOptions(expressions=["happy"])
    output = photos / "augmented"
    first = augment_dataset(photos, output, generator, "hash", options, show_progress=False)
    assert (first.sources, first.faces) == (2, 4)
    again = augment_dataset(photos, photos / "again.h5", generator, "hash", options, show_progress=False)
    assert (again.sources, again.faces) == (2, 4), "the first run's PNGs were read as photos"
    with pytest.raises(InputError, match="a face table exaug wrote"):  # align would re-detect its copies
        discover_sources(output)
    # Given as INPUT, augment reads the table's original faces, never its generated copies.
    copies = augment_dataset(output, tmp_path / "from_table.h5", generator, "hash",
                             AugmentOptions(expressions=["sad"]), show_progress=False)
    assert (copies.sources, copies.faces) == (2, 4)
    with read_faces(tmp_path / "from_table.h5") as table:
        assert table.synthetic.tolist() == [False, True, False, True]


def test_a_preview_never_replaces_the_input_the_output_or_a_file_that_is_not_a_png(tmp_path, photo, test_checkpoint):
    from exaug.model.generator import ExpressionGenerator
    from exaug.pipelines.augment import AugmentOptions, augment_dataset
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "1.jpg").write_bytes(photo)
    (tmp_path / "notes.png").write_text("my notes, named .png")
    (tmp_path / "sheets.png").mkdir()
    (tmp_path / "old_sheet.png").write_bytes((REPO / "examples" / "astronaut.png").read_bytes())
    generator = ExpressionGenerator.load(test_checkpoint, "cpu")
    output = tmp_path / "out.h5"
    for preview, reason in ((photos / "1.jpg", "the preview is a PNG"), (output, "the preview is a PNG"),
                            (photos / "sheet.png", "is inside the input"),
                            (tmp_path / "folder_out" / "sheet.png", "is inside the output"),
                            (tmp_path / "notes.png", "exists and is not a PNG"), (tmp_path / "sheets.png", "is a folder")):
        target = tmp_path / "folder_out" if "output" in reason else output
        with pytest.raises(ExaugError, match=reason):
            augment_dataset(photos, target, generator, "hash", AugmentOptions(expressions=["happy"], preview=preview),
                            show_progress=False)
        assert not target.exists(), "refused before any work"
    assert (photos / "1.jpg").read_bytes() == photo and (tmp_path / "notes.png").read_text() == "my notes, named .png"
    augment_dataset(photos, output, generator, "hash",
                    AugmentOptions(expressions=["happy"], preview=tmp_path / "old_sheet.png"), show_progress=False)
    assert Image.open(tmp_path / "old_sheet.png").size[0] == 2 * generator.image_size  # an old sheet is replaced


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


def test_options_out_of_range_are_refused_not_crashed_on(tmp_path, photo, ckplus_dir, video_clip):
    """A batch of 0 crashed align on range(); a threshold of 2 or a detection side of 0 quietly found
    no face; a negative learning rate crashed in torch's optimiser. Each is refused (exit 2): by the
    option parser, naming the option, or in one error line; so is an x264 preset x264 does not have
    (it said "invalid argument" at frame 0); nothing is written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(photo)
    out = tmp_path / "out.h5"
    for args, named in ((("align", tmp_path / "in", "-o", out, "--batch-size", "0"), "--batch-size"),
                        (("align", tmp_path / "in", "-o", out, "--workers", "-1"), "--workers"),
                        (("align", tmp_path / "in", "-o", out, "--threshold", "2"), "--threshold"),
                        (("align", tmp_path / "in", "-o", out, "--max-side", "0"), "--max-side"),
                        (("augment", tmp_path / "in", "-o", out, "--min-face-size", "0"), "--min-face-size"),
                        (("augment", tmp_path / "in", "-o", out, "--batch-size", "-1"), "--batch-size"),
                        (("train", ckplus_dir, "-o", tmp_path / "run", "--lr", "-1"), "--lr must be positive"),
                        (("train", ckplus_dir, "-o", tmp_path / "run", "--lambda-gp", "-1"), "--lambda-gp must be 0"),
                        (("video", video_clip, "-o", out.with_suffix(".mp4"), "--emotion", "happy",
                          "--preset", "fastest"),
                         "--preset 'fastest': x264's presets are ultrafast,")):
        result = _exaug(*args)
        printed = result.stdout + result.stderr
        assert result.returncode == 2 and named in printed, (args, printed)
        assert "Traceback" not in printed and "a bug" not in printed, (args, printed)
        assert not out.exists() and not out.with_suffix(".mp4").exists() and not (tmp_path / "run").exists(), args


def test_launcher_variables_that_are_not_process_counts_are_one_line(tmp_path, photo, ckplus_dir, monkeypatch,
                                                                    capsys):
    """WORLD_SIZE=abc crashed augment in int() (exit 3); a negative RANK or a WORLD_SIZE of 0 is no
    process either. augment and train read them (torchrun's) and say which is wrong, exit 2, and
    nothing is written."""
    from exaug.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(photo)
    for command, variable, value, expected in (
            (("augment", tmp_path / "in", "-o", tmp_path / "out.h5"), "WORLD_SIZE", "abc", "of at least 1"),
            (("augment", tmp_path / "in", "-o", tmp_path / "out.h5"), "RANK", "-1", "of at least 0"),
            (("train", ckplus_dir, "-o", tmp_path / "run", "--no-align"), "WORLD_SIZE", "0", "of at least 1")):
        monkeypatch.setenv(variable, value)
        monkeypatch.setattr(sys, "argv", ["exaug", *map(str, command), "--device", "cpu"])
        with pytest.raises(SystemExit) as exit_code:
            main()
        monkeypatch.delenv(variable)
        printed = capsys.readouterr().err.strip()
        assert exit_code.value.code == 2 and len(printed.splitlines()) == 1, printed
        assert printed.startswith(f"error: environment variable {variable}={value!r}: expected a whole number "
                                  f"{expected}"), printed
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "run").exists()


def test_a_face_size_out_of_range_is_one_line_before_anything_is_written(tmp_path, photo):
    """--size 100000 asked the aligner for terabytes (a crash), -5 for a negative tensor, and 0 was
    quietly the default: each is refused, naming the size and the range, and nothing is written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(photo)
    for command, size in (("align", "100000"), ("align", "-5"), ("augment", "0"), ("augment", "5000")):
        output = tmp_path / f"{command}{size}.h5"
        _one_line_error(_exaug(command, tmp_path / "in", "-o", output, "--size", size, "-q"), f"--size {size}",
                        "16 to 4096 pixels")
        assert not output.exists()


def test_an_unexpected_failure_is_one_line_with_its_traceback_kept_and_a_system_error_names_its_file(
        tmp_path, photo, monkeypatch, capsys):
    """Whatever goes wrong, the user sees one line: a system error (a full disk) names its file and
    the system's reason (exit 2); running out of memory says so, and what needs less (exit 2); an
    exception nobody expected is exaug's bug, said so (exit 3), with its traceback in a file to
    report, not on the screen."""
    import exaug.cli.augment as augment_cli
    from exaug.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(photo)
    failures = iter([OSError(28, "No space left on device", str(tmp_path / "out.h5")),
                     ValueError("a synthetic face needs\nthe expression"),
                     RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                                  "you tried to allocate 2880000000000 bytes.")])

    def fail(*args, **kwargs):
        raise next(failures)

    monkeypatch.setattr(augment_cli, "augment_dataset", fail)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    printed = []
    for _ in range(3):
        monkeypatch.setattr(sys, "argv", ["exaug", "augment", str(tmp_path / "in"), "-o", str(tmp_path / "out.h5"), "-q"])
        with pytest.raises(SystemExit) as exit_code:
            main()
        printed.append((exit_code.value.code, capsys.readouterr().err))
    (disk_code, disk), (bug_code, bug), (memory_code, memory) = printed
    assert disk_code == 2 and disk.strip() == f"error: {tmp_path / 'out.h5'}: No space left on device"
    assert bug_code == 3 and len(bug.strip().splitlines()) == 1 and "Traceback" not in bug
    assert "exaug failed unexpectedly (ValueError: a synthetic face needs the expression); this is a bug" in bug
    assert memory_code == 2 and memory.startswith("error: out of memory (") and "a smaller --batch-size" in memory
    (kept,) = tmp_path.glob("exaug-error-*.txt")  # the bug's; running out of memory is not one
    assert str(kept) in bug
    text = kept.read_text()
    assert text.startswith("exaug ") and " augment " in text and "Traceback" in text and "ValueError" in text


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory, photo) -> Path:
    """Copies of one small photo: two commit batches, quick to detect."""
    folder = tmp_path_factory.mktemp("many")
    for number in range(24):
        (folder / f"p{number:02d}.jpg").write_bytes(photo)
    return folder


@pytest.fixture(scope="module")
def many_batches_of_photos(tmp_path_factory, photo) -> Path:
    """96 copies of one small photo: six commit batches, so a Ctrl-C sent once the first is committed
    lands while most of the run is still ahead."""
    folder = tmp_path_factory.mktemp("many-batches")
    for number in range(MANY_BATCHES):
        (folder / f"p{number:03d}.jpg").write_bytes(photo)
    return folder


MANY_BATCHES = 96


@pytest.mark.parametrize("command", ["align", "augment"])
def test_ctrl_c_stops_the_threads_exits_130_and_resumes(command, many_batches_of_photos, test_checkpoint, tmp_path):
    output = tmp_path / "out.h5"
    args = [command, many_batches_of_photos, "-o", output, "-q", "--device", "cpu", "--workers", "2"]
    if command == "augment":
        args += ["--model", test_checkpoint, "--emotion", "happy"]
    process = subprocess.Popen([sys.executable, *EXAUG_AS_IN_A_TERMINAL, *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        printed = interrupt_when(process, output.exists, 300)  # once the first batch is committed
    finally:
        process.kill()
    assert process.returncode == 130 and "terminate called" not in printed and "Traceback" not in printed, printed
    assert "run the same command again to resume" in printed
    resumed = _exaug(*args)
    assert resumed.returncode == 0 and "already done (resumed)" in resumed.stdout + resumed.stderr, resumed.stderr
    from exaug.io.store import read_faces
    with read_faces(output) as table:
        assert sorted(set(table.sources)) == [f"p{number:03d}.jpg" for number in range(MANY_BATCHES)]
        assert len(table) == MANY_BATCHES * (2 if command == "augment" else 1)


def test_ctrl_c_while_the_commands_are_imported_exits_130_without_a_traceback(monkeypatch):
    """The console script (exaug.launch) imports the commands, and torch with them, inside a guard."""
    import types
    from exaug import launch

    class Importing(types.ModuleType):  # a Ctrl-C arriving while exaug.cli is being imported
        def __getattr__(self, name: str):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "exaug.cli", Importing("exaug.cli"))
    with pytest.raises(SystemExit) as stopped:
        launch.main()
    assert stopped.value.code == 130


def test_ctrl_c_during_video_stops_its_thread_exits_130_and_leaves_nothing(video_clip, test_checkpoint, tmp_path):
    """Ctrl-C while the video is half written (its following thread busy with the next chunk): exit
    130 with no traceback and no abort, and neither the video, its temporary nor its lock is left."""
    output = tmp_path / "out.mp4"
    args = ["video", video_clip, "-o", output, "--emotion", "happy", "--model", test_checkpoint, "--preset", "veryfast"]
    process = subprocess.Popen([sys.executable, *EXAUG_AS_IN_A_TERMINAL, *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def writing() -> bool:  # the writer has started: frames are being encoded into the temporary
        return any(path.name.startswith(".out.mp4.tmp") and path.stat().st_size > 0 for path in tmp_path.iterdir())

    try:
        printed = interrupt_when(process, writing, 300)
    finally:
        process.kill()
    assert process.returncode == 130 and "terminate called" not in printed and "Traceback" not in printed, printed
    assert "interrupted: " in printed and "out.mp4 was not written" in printed, printed
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ outputs


def test_a_second_writer_of_one_output_is_refused(tmp_path):
    from exaug.errors import ExaugError
    from exaug.io.store import open_writer
    for output in (tmp_path / "out.h5", tmp_path / "folder"):
        first = open_writer(output, run_key={"run": 1}, attrs={"size": 8})
        with pytest.raises(ExaugError, match=f"^{output}: another exaug process .pid {os.getpid()}. is writing it"):
            open_writer(output, run_key={"run": 1}, attrs={"size": 8}, overwrite=True)
        first.finish()
        open_writer(output, run_key={"run": 1}, attrs={"size": 8}).finish()  # released by finishing
        assert not list(tmp_path.glob(".*.lock"))


def test_a_writer_killed_with_sigkill_leaves_no_lock_behind(tmp_path):
    from exaug.io.store import open_writer
    output = tmp_path / "out.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from exaug.io.store import open_writer; "
                               f"w = open_writer({str(output)!r}, run_key={{}}, attrs={{}}); print('locked', "
                               "flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        holder.kill()
        holder.wait()
    open_writer(output, run_key={}, attrs={}).finish()  # the kernel released the dead holder's lock


def test_overwrite_never_deletes_what_exaug_did_not_write(tmp_path):
    import h5py
    from exaug.errors import ExaugError
    from exaug.io.store import open_writer
    mine = tmp_path / "mydata.h5"
    with h5py.File(mine, "w") as h5:
        h5["x"] = np.arange(3)
    (tmp_path / "mydata.h5.parts").mkdir()
    (tmp_path / "mydata.h5.parts" / "notes.txt").write_text("mine")
    with pytest.raises(ExaugError, match="mydata.h5 exists and was not written by exaug; --overwrite will not"):
        open_writer(mine, run_key={}, attrs={}, overwrite=True)
    mine.unlink()  # even alone, the user's folder beside it is kept
    with pytest.raises(ExaugError, match="mydata.h5.parts holds files exaug did not write"):
        open_writer(mine, run_key={}, attrs={}, overwrite=True)
    with pytest.raises(ExaugError, match="mydata.h5.parts holds files exaug did not write"):
        open_writer(mine, run_key={}, attrs={})
    assert (tmp_path / "mydata.h5.parts" / "notes.txt").read_text() == "mine"
    (tmp_path / "adir.h5").mkdir()
    with pytest.raises(ExaugError, match="adir.h5 exists and was not written by exaug"):
        open_writer(tmp_path / "adir.h5", run_key={}, attrs={}, overwrite=True)
    assert (tmp_path / "adir.h5").is_dir()


def test_input_is_never_its_own_output(tmp_path, many_photos, test_checkpoint, video_clip):
    aligned = tmp_path / "al.h5"
    assert _exaug("align", many_photos, "-o", aligned, "-q", "--device", "cpu").returncode == 0
    before = aligned.read_bytes()
    (tmp_path / "same.h5").symlink_to(aligned)  # another name, one inode
    for name in ("al.h5", "same.h5"):
        result = _exaug("augment", aligned, "-o", tmp_path / name, "--overwrite", "--model", test_checkpoint, "-q")
        _one_line_error(result, "is the input", "choose another output")
    assert aligned.read_bytes() == before
    clip = tmp_path / "small.mp4"
    clip.write_bytes(video_clip.read_bytes())
    result = _exaug("video", clip, "-o", clip, "--emotion", "happy", "--model", test_checkpoint, "-q")
    _one_line_error(result, str(clip), "is the input")
    assert clip.read_bytes() == video_clip.read_bytes()


def _table_content(path: Path) -> tuple:
    from exaug.io.store import read_faces
    with read_faces(path) as table:
        return (table.images[:], list(table.source), list(table.identity), table.expression.tolist(),
                table.synthetic.tolist(), table.face.tolist(), table.failures)


@pytest.fixture(scope="module")
def few_photos(many_photos, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("few")
    for photo in sorted(many_photos.iterdir())[:12]:
        (folder / photo.name).write_bytes(photo.read_bytes())
    return folder


@pytest.mark.parametrize("name, start", [("out.h5", "together"), ("folder", "together"), ("out.h5", "stopped")])
def test_two_augments_on_one_output_one_refuses_the_other_writes_it_whole(name, start, few_photos, test_checkpoint,
                                                                          tmp_path, tmp_path_factory):
    """``together``: both start at once and race for the output (the later one, if the first is
    already done, finds a finished output and has nothing to do); ``stopped``: the second starts
    while the first holds the output, frozen by SIGSTOP, so it must be refused."""
    args = [few_photos, "--model", test_checkpoint, "--emotion", "happy,sad", "-q", "--device", "cpu",
            "--workers", "1"]
    reference = tmp_path_factory.getbasetemp() / f"single-{name}"
    if not reference.exists():
        assert _exaug("augment", *args, "-o", reference).returncode == 0
    output = tmp_path / name
    command = [sys.executable, "-m", "exaug", "augment", *map(str, args), "-o", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch() -> subprocess.Popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    if start == "together":
        both = [launch(), launch()]
    else:
        first = launch()
        lock = tmp_path / f".{name}.lock"
        deadline = time.monotonic() + 300
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        second = launch()
        second.wait(timeout=300)
        first.send_signal(signal.SIGCONT)
        both = [first, second]
    results = [(process.wait(timeout=600), process.stdout.read()) for process in both]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 2], [0, 0]) and (start == "together" or codes == [0, 2]), results
    for code, printed in results:
        assert "Traceback" not in printed and (code == 0 or "another exaug process" in printed), printed
    for ours, single in zip(_table_content(output), _table_content(reference)):
        assert np.array_equal(ours, single) if isinstance(ours, np.ndarray) else ours == single


def _file_size_limit(limit: int):
    """For a subprocess: files beyond ``limit`` bytes fail to write (EFBIG), as on a full disk."""
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_is_one_line_and_leaves_the_output_resumable(many_photos, test_checkpoint, ckplus_dir, tmp_path):
    output = tmp_path / "full.h5"
    full = dict(preexec_fn=_file_size_limit(60_000))
    result = _exaug("augment", many_photos, "-o", output, "--model", test_checkpoint, "--emotion", "happy", "-q",
                    **full)
    _one_line_error(result, "full.h5.parts/part-00000.h5: cannot write (File too large)")
    assert not list(tmp_path.rglob(".*.tmp"))
    result = _exaug("train", ckplus_dir, "-o", tmp_path / "run", "--image-size", "64", "--channels", "1",
                    "--conv-dim", "8", "--repeat-num", "1", "--batch-size", "4", "--n-critic", "2", "--no-align",
                    "--workers", "0", "--device", "cpu", "--iters", "2", "--save-every", "2", "--sample-every", "100",
                    **full)
    _one_line_error(result, str(tmp_path / "run"), "cannot write (File too large)")
    assert _exaug("augment", many_photos, "-o", output, "--model", test_checkpoint, "--emotion", "happy",
                  "-q").returncode == 0  # room again: the run resumes and finishes


def test_photos_without_expression_folders_are_one_line_naming_them_not_the_cache(tmp_path, test_checkpoint):
    """exaug train and eval align a photo folder into a cache first; that the photos carry no
    expression labels is said of the folder the user gave, and no run folder is left."""
    for command in (("train", REPO / "examples", "-o", tmp_path / "run", "--iters", "1"),
                    ("eval", REPO / "examples", "--model", test_checkpoint)):
        line = _one_line_error(_exaug(*command, "--cache-dir", tmp_path / "cache"),
                               f"{REPO / 'examples'}: no face has an expression label")
        assert str(tmp_path / "cache") not in line
    assert not (tmp_path / "run").exists()


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        folder = Path("/sys/exaug-test")  # read-only even for root
        if os.access("/sys", os.W_OK) and Path("/sys").stat().st_dev == 0:
            pytest.skip("no read-only folder for root here")
        return folder
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder


def test_an_unwritable_output_folder_is_one_line(many_photos, tmp_path):
    folder = _unwritable_folder(tmp_path)
    for output in (folder / "out.h5", folder / "out"):
        _one_line_error(_exaug("align", many_photos, "-o", output, "-q"), str(output), "cannot write")


def test_a_sheet_or_report_that_cannot_be_written_is_refused_before_the_work(many_photos, ckplus_dir,
                                                                            test_checkpoint, tmp_path):
    """A --preview, --json or --save-classifier written at the end used to fail after the whole run."""
    folder = _unwritable_folder(tmp_path)
    output = tmp_path / "out.h5"
    _one_line_error(_exaug("augment", many_photos, "-o", output, "--model", test_checkpoint, "--emotion", "happy",
                           "--preview", folder / "sheet.png", "-q"), f"{folder / 'sheet.png'}: cannot write")
    assert not output.exists() and not output.with_name("out.h5.parts").exists()
    for option in ("--json", "--save-classifier"):
        report = folder / "report.out"
        _one_line_error(_exaug("eval", ckplus_dir, "--model", test_checkpoint, option, report, "--no-align",
                               "--cache-dir", tmp_path / "cache", "-q"), f"{report}: cannot write")
    assert not (tmp_path / "cache").exists()  # refused before the data was read
    _one_line_error(_exaug("eval", ckplus_dir, "--model", test_checkpoint, "--json", tmp_path, "--no-align", "-q"),
                    f"{tmp_path}: is a folder")


def test_a_file_where_the_output_needs_a_folder_is_named(many_photos, ckplus_dir, tmp_path, tmp_path_factory):
    """`-o prev1.png/x.h5`, prev1.png a file (an earlier preview sheet), said only "cannot write (File
    exists)"; the line says which name is a file, for every form of output, for a PNG (--preview) and
    for a training run's folder."""
    from conftest import ck_subject_folder
    from exaug.errors import ExaugError
    from exaug.io.images import save_png
    from exaug.train import TrainConfig, train
    sheet = tmp_path / "prev1.png"
    save_png(np.full((8, 8, 3), 7, np.uint8), sheet)
    for output in (sheet / "x.h5", sheet / "x", sheet / "deeper" / "x.h5"):
        _one_line_error(_exaug("align", many_photos, "-o", output, "-q"),
                        f"{output}: cannot write ({sheet} is a file, not a folder)")
    refusal = f"{sheet / 'p.png'}: cannot write ({sheet} is a file, not a folder)"
    with pytest.raises(ExaugError, match=re.escape(refusal)):
        save_png(np.full((8, 8, 3), 7, np.uint8), sheet / "p.png")
    faces = ck_subject_folder(ckplus_dir, tmp_path_factory.mktemp("ck"), 4)
    for run in (sheet / "run", sheet):
        config = TrainConfig(data=str(faces), output=str(run), image_size=64, channels=1, conv_dim=8, repeat_num=1,
                             iters=1, batch_size=4, n_critic=1, align=False, workers=0, device="cpu", val_subjects="0")
        with pytest.raises(ExaugError, match=re.escape(f"{run}: cannot write ({sheet} is a file, not a folder)")):
            train(config)
    assert [path.name for path in tmp_path.iterdir()] == ["prev1.png"] and sheet.is_file()


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory, photo) -> Path:
    """Two seconds of a small face at 160x160: quick to edit."""
    import av
    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    frame = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB").resize((160, 160)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 160, "yuv420p"
        for _ in range(50):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_video_output_name_and_killed_video_leftovers(tiny_video, test_checkpoint, tmp_path):
    _one_line_error(_exaug("video", tiny_video, "-o", tmp_path / "notes.txt", "--emotion", "happy", "--model",
                           test_checkpoint, "-q"), "notes.txt: exaug writes .mp4, .mov or .mkv videos")
    _one_line_error(_exaug("video", tiny_video, "-o", tmp_path / "edited.avi", "--emotion", "happy", "--model",
                           test_checkpoint, "-q"), "edited.avi: exaug writes .mp4, .mov or .mkv videos")
    output = tmp_path / "edited.mp4"
    command = [sys.executable, "-m", "exaug", "video", str(tiny_video), "-o", str(output), "--emotion", "happy",
               "--model", str(test_checkpoint), "--preset", "ultrafast", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not [path for path in tmp_path.iterdir() if path.name.startswith(".edited.mp4.tmp")]:  # writing
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]  # what kill -9 leaves
    assert subprocess.run(command, timeout=600).returncode == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["edited.mp4"]


def test_video_into_a_folder_not_there_yet_makes_it_as_align_does(tiny_video, test_checkpoint, tmp_path):
    from exaug.io.video import probe
    output = tmp_path / "results" / "today" / "edited.mp4"
    options = ("--emotion", "happy", "--model", test_checkpoint, "--preset", "ultrafast", "-q")
    assert _exaug("video", tiny_video, "-o", output, *options).returncode == 0
    assert probe(output).frames == 50 and [path.name for path in output.parent.iterdir()] == ["edited.mp4"]
    (tmp_path / "notes").write_text("a file, not a folder")
    _one_line_error(_exaug("video", tiny_video, "-o", tmp_path / "notes" / "edited.mp4", *options),
                    "notes/edited.mp4: cannot write")
    (tmp_path / "folder.mp4").mkdir()  # refused before the frames are edited, not when moving the video
    _one_line_error(_exaug("video", tiny_video, "-o", tmp_path / "folder.mp4", *options), "folder.mp4: is a folder")
    assert not list((tmp_path / "folder.mp4").iterdir())


def test_awkward_names_in_a_folder_output(tmp_path, photo):
    from exaug.io.store import read_faces
    from exaug.pipelines.align import align_dataset
    data = tmp_path / "in"
    long_name = "x" * 240 + ".jpg"
    for rel in ["exaug.json/a.jpg", "manifest.csv/b.jpg", f"bob/{long_name}"]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(photo)
    with open(os.fsencode(data / "bob") + b"/\xff\xfe.jpg", "wb") as handle:
        handle.write(photo)
    for output in (tmp_path / "out", tmp_path / "out.h5"):
        summary = align_dataset(data, output, show_progress=False)
        assert summary.faces == 4 and not summary.failures
        with read_faces(output) as table:
            assert sorted(table.sources) == sorted(["exaug.json/a.jpg", "manifest.csv/b.jpg", f"bob/{long_name}",
                                                    "bob/\\xff\\xfe.jpg"])
            assert table.images[:].shape[0] == 4
        assert align_dataset(data, output, show_progress=False).resumed == 4


# ----------------------------------------------------------------------------- reading tables, merge


def _table(output: Path, sources: list[str], run_key: dict | None = None, finish: bool = True) -> Path:
    """A small face table of ``sources`` (one 8x8 face each) written by exaug's writer."""
    from exaug.io.store import FaceRows, open_writer
    rows = FaceRows(np.full((len(sources), 8, 8, 3), 7, np.uint8), ["id"] * len(sources),
                    np.zeros(len(sources), np.int8), sources, np.zeros(len(sources)), np.zeros(len(sources), bool))
    writer = open_writer(output, run_key=run_key or {"input": "/data", "expressions": ["happy"]},
                         attrs={"size": 8, "model_hash": "m"})
    writer.commit(rows, done=sources)
    if finish:
        writer.finish()
    return output  # unfinished: what a killed process leaves (parts, a master), its lock gone with the writer


def test_hdf5_inputs_that_read_other_files_are_refused(tmp_path):
    import h5py
    from exaug.errors import InputError
    from exaug.io.store import read_faces
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"password" * 72)  # 576 bytes: three 8x8x3 images
    table = _table(tmp_path / "table.h5", ["a.jpg", "b.jpg", "c.jpg"])
    for kind in ("external", "virtual", "link"):
        hostile = tmp_path / f"{kind}.h5"
        with h5py.File(table) as good, h5py.File(hostile, "w") as h5:
            for name in good:
                if name != "images":
                    good.copy(name, h5)
            h5.attrs.update(good.attrs)
            if kind == "external":
                h5.create_dataset("images", (3, 8, 8, 3), np.uint8, external=[(str(secret), 0, 576)])
            elif kind == "virtual":
                layout = h5py.VirtualLayout((3, 8, 8, 3), np.uint8)
                layout[:] = h5py.VirtualSource(str(table), "images", shape=(3, 8, 8, 3))
                h5.create_virtual_dataset("images", layout)
            else:
                h5["images"] = h5py.ExternalLink(str(table), "images")
        with pytest.raises(InputError, match=f"^{hostile}: 'images' .*(other file|virtual dataset)"):
            read_faces(hostile)
    unfinished = _table(tmp_path / "unfinished.h5", ["a.jpg"], finish=False)
    with read_faces(unfinished) as table:  # exaug's own master over its own parts still reads
        assert table.images[:].shape == (1, 8, 8, 3)


def test_manifest_paths_that_leave_the_folder_are_refused(tmp_path):
    from exaug.errors import InputError
    from exaug.io.store import read_faces
    folder = _table(tmp_path / "faces", ["a.jpg"])
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "secret.png")
    manifest = folder / "manifest.csv"
    original = manifest.read_text()
    (png,) = [line.split(",")[0] for line in original.splitlines()[1:]]
    for escape in ("../secret.png", str(tmp_path / "secret.png")):
        manifest.write_text(original.replace(png, escape))
        with pytest.raises(InputError, match="leaves the folder"):
            read_faces(folder)
    (folder / "id" / "link.png").symlink_to(tmp_path / "secret.png")
    manifest.write_text(original.replace(png, "id/link.png"))
    with pytest.raises(InputError, match="links out of"):
        read_faces(folder)


def test_merge_takes_only_finished_distinct_compatible_parts(tmp_path):
    from exaug.errors import ExaugError
    from exaug.io.store import merge, read_faces
    first = _table(tmp_path / "s0.h5", ["a.jpg", "b.jpg"])
    second = _table(tmp_path / "s1.h5", ["c.jpg"])
    (tmp_path / "copy.h5").write_bytes(first.read_bytes())
    unfinished = _table(tmp_path / "killed.h5", ["d.jpg"], finish=False)
    other = _table(tmp_path / "sad.h5", ["e.jpg"], run_key={"input": "/data", "expressions": ["sad"]})
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(second.read_bytes()[:3000])
    cases = {(first, first): "given twice", (first, tmp_path / "copy.h5"): "holds sources .* too",
             (first, unfinished): "killed.h5: unfinished", (first, other): "--emotion list differs",
             (first, truncated): "cut.h5: damaged or truncated"}
    for inputs, reason in cases.items():
        with pytest.raises(ExaugError, match=reason):
            merge(list(inputs), tmp_path / "merged.h5")
        assert not (tmp_path / "merged.h5").exists()
    merge([first, second], tmp_path / "merged.h5")
    with read_faces(tmp_path / "merged.h5") as merged:
        assert list(merged.source) == ["a.jpg", "b.jpg", "c.jpg"]


def test_merge_joins_shards_by_their_index_and_refuses_an_incomplete_set(tmp_path):
    """Each shard records (index, count) in its run key: a run's shards are joined by index wherever
    they are named, outputs that are not shards (one-shard runs included) where they are named; a set
    lacking a shard, holding one twice, or mixing --num-shards counts is refused in one line naming it."""
    from exaug.errors import ExaugError
    from exaug.io.store import merge, read_faces

    def shard(name: str, sources: list[str], index: int, count: int, input_path: str = "/data") -> Path:
        return _table(tmp_path / name, sources, {"input": input_path, "expressions": ["happy"],
                                                 "shard": [index, count]})

    s0, s1, s2 = shard("s0.h5", ["a.jpg"], 0, 3), shard("s1.h5", ["b.jpg"], 1, 3), shard("s2.h5", ["c.jpg"], 2, 3)
    other = shard("other.h5", ["d.jpg"], 0, 1, "/more")  # a whole run of another folder: no shard of a set
    plain = _table(tmp_path / "plain.h5", ["e.jpg"], {"input": "/old", "expressions": ["happy"]})  # no shard key
    cases = {(s2, s0): r"incomplete set of shards of /data: shard 1 of 3 is missing \(.*s0.h5 is shard 0 of 3, "
                       r".*s2.h5 is shard 2 of 3\); give all 3 parts",
             (s1,): "shards 0, 2 of 3 are missing",
             (s0, s1, s2, shard("half.h5", ["f.jpg"], 1, 2)): "shards of /data split 2 and 3 ways",
             (s0, s1, s2, shard("again.h5", [], 1, 3)): "shard 1 of 3 of /data twice",
             (s0, shard("moved.h5", ["a.jpg", "b.jpg"], 1, 3), s2):  # the input grew between the shards' runs
                 r"s0.h5 and .*moved.h5 \(shards 0 and 1 of 3\) both hold a.jpg: images added to or removed from "
                 r"/data between the shards' runs .* run every shard again with --overwrite"}
    for inputs, reason in cases.items():
        with pytest.raises(ExaugError, match=reason):
            merge(list(inputs), tmp_path / "merged.h5")
        assert not (tmp_path / "merged.h5").exists()
    merge([plain, s2, other, s0, s1], tmp_path / "merged.h5")
    with read_faces(tmp_path / "merged.h5") as merged:
        assert list(merged.source) == ["e.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"]
        assert merged.attrs["merged_from"] == [str(path) for path in (plain, s0, s1, s2, other)]


# ------------------------------------------------------------------------- every command, one folder


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` (links not followed) but those under ``skip``: size and mtime."""
    found = {}
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if Path(folder) / name not in skip]
        for name in filenames:
            path = Path(folder) / name
            if path not in skip:
                stat = path.lstat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_every_command_against_a_folder_of_hostile_inputs(tmp_path, photo, test_checkpoint, tiny_video):
    """Exit codes and one-line errors, no traceback, nothing outside the outputs read into them or
    written: the cases of issue 14 in one folder."""
    import h5py
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET" * 1000)
    data = tmp_path / "data"
    for rel in ["alice/1.jpg", "bob/" + "y" * 240 + ".jpg", "exaug.json/a.jpg", "manifest.csv/b.jpg"]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(photo)
    with open(os.fsencode(data / "bob") + b"/\xff\xfe.jpg", "wb") as handle:
        handle.write(photo)
    (data / "alice" / "loop").symlink_to("..")
    _png_header_only(data / "bomb.png", 40_000, 40_000)
    (data / "empty.jpg").write_bytes(b"")
    (data / "notes.jpg").write_text("not a picture")
    external = tmp_path / "external.h5"
    with h5py.File(external, "w") as h5:
        h5.create_dataset("images", (10, 64, 64, 3), np.uint8, external=[(str(secret), 0, 10 * 64 * 64 * 3)])
        h5["identity"] = np.zeros(10, np.int32)
    damaged = tmp_path / "damaged.pt"
    model = bytearray(test_checkpoint.read_bytes())
    model[len(model) // 2:len(model) // 2 + 4096] = bytes(4096)
    damaged.write_bytes(bytes(model))
    (tmp_path / "adir.h5").mkdir()
    escape = _table(tmp_path / "escape", ["a.jpg"])
    manifest = escape / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("id/a_f0_original.png", "../secret.txt"))

    out = tmp_path / "out"
    before = _snapshot(tmp_path, {out})
    model_args = ["--model", test_checkpoint, "--emotion", "happy", "-q", "--device", "cpu"]
    succeeding = {
        "align to HDF5": ["align", data, "-o", out / "aligned.h5", "-q", "--device", "cpu"],
        "align to a folder": ["align", data, "-o", out / "aligned", "-q", "--device", "cpu"],
        "augment to HDF5": ["augment", data, "-o", out / "augmented.h5", *model_args],
    }
    for what, args in succeeding.items():
        result = _exaug(*args)
        printed = result.stdout + result.stderr
        assert result.returncode == 0 and "Traceback" not in printed, (what, printed)
        for reason in ("40000x40000 pixels is over the limit", "empty file", "not an image"):
            assert reason in printed, (what, reason, printed)
        assert re.search(r"images found\s+│ 8 ", printed), printed  # the loop is walked once
    failing = {
        "an input that is the output": (["augment", out / "aligned.h5", "-o", out / "aligned.h5", "--overwrite",
                                         *model_args], "is the input"),
        "HDF5 external storage": (["augment", external, "-o", out / "stolen.h5", *model_args], "stored in other files"),
        "a damaged checkpoint": (["augment", data, "-o", out / "never.h5", "--model", damaged], "fails its checksum"),
        "a directory named .h5": (["augment", data, "-o", tmp_path / "adir.h5", "--overwrite", *model_args],
                                  "was not written by exaug"),
        "a part twice": (["merge", out / "augmented.h5", out / "augmented.h5", "-o", out / "merged.h5"], "given twice"),
        "a part as the output": (["merge", out / "augmented.h5", "-o", out / "augmented.h5"], "is the input"),
        "a manifest leaving its folder": (["merge", escape, "-o", out / "merged.h5"], "leaves the folder"),
        "a video to a text file": (["video", tiny_video, "-o", out / "notes.txt", *model_args], "exaug writes .mp4"),
        "training on no expression folders": (["train", data, "-o", out / "run", "--no-align", "--device", "cpu"],
                                              "no readable face in an expression sub-folder"),
    }
    for what, (args, reason) in failing.items():
        _one_line_error(_exaug(*args), reason)
    assert _snapshot(tmp_path, {out}) == before  # nothing outside the outputs written
    assert sorted(path.name for path in out.iterdir()) == ["aligned", "aligned.h5", "augmented.h5"]
    for path in out.rglob("*"):
        assert not path.is_file() or b"TOP-SECRET" not in path.read_bytes(), path
