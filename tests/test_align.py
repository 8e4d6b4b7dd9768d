"""``exaug align`` end to end on the shared photos: rows, layouts, bad files, resume, CLI errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO, cuda_only
from exaug.cli import app
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.faces.detect import DetectionOptions
from exaug.io.store import read_faces
from exaug.pipelines.align import AlignOptions, align_dataset


def _exaug(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exaug", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_align_without_output_writes_input_aligned_h5_in_the_current_folder(tmp_path):
    result = _exaug("align", str(REPO / "examples"), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["examples.aligned.h5"]
    with read_faces(tmp_path / "examples.aligned.h5") as table:
        assert sorted(table.source) == ["astronaut.png", "grace_hopper.jpg"]


@pytest.fixture(scope="module")
def aligned_h5(tmp_path_factory, faces_dir) -> Path:
    output = tmp_path_factory.mktemp("align") / "faces.h5"
    align_dataset(faces_dir, output, show_progress=False)
    return output


def test_hdf5_rows_say_where_each_face_came_from(aligned_h5):
    with read_faces(aligned_h5) as table:
        assert len(table) == 10
        sources = list(table.source)
        assert sources.count("groups/multiface.jpg") == 6
        for person in ["angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"]:
            assert sources.count(f"people/{person}/1.jpg") == 1
        group_rows = np.flatnonzero(table.source == "groups/multiface.jpg")
        assert sorted(table.face[group_rows]) == list(range(6))
        assert set(table.identity) == {"groups", "angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"}
        assert (table.expression == -1).all() and not table.synthetic.any()
        assert table.extra["landmarks"].shape == (10, 5, 2) and (table.extra["prob"] > 0.9).all()
        assert table.images[0:10].shape == (10, 128, 128, 3)
    with h5py.File(aligned_h5) as h5:
        assert list(h5.attrs["expressions"]) == list(EXPRESSIONS)
        assert h5.attrs["template"] == "exaug" and int(h5.attrs["size"]) == 128


def test_transform_maps_landmarks_onto_the_template(aligned_h5):
    from exaug.faces.align import get_template

    with read_faces(aligned_h5) as table:
        landmarks, transforms = table.extra["landmarks"], table.extra["transform"]
    mapped = np.einsum("nij,nkj->nki", transforms[:, :, :2], landmarks) + transforms[:, None, :, 2]
    assert np.linalg.norm(mapped - get_template("exaug").points, axis=2).mean() < 5


def test_expression_folders_and_arcface_folder_output(tmp_path, people_dir):
    for folder, person in [("Happiness", "paul_rudd"), ("angry", "kate_siegel")]:
        (tmp_path / "in" / folder).mkdir(parents=True)
        shutil.copy(people_dir / person / "1.jpg", tmp_path / "in" / folder / f"{person}.jpg")
    output = tmp_path / "out"
    align_dataset(tmp_path / "in", output, AlignOptions(template="arcface"), show_progress=False)
    manifest = (output / "manifest.csv").read_text().splitlines()
    assert manifest[0].startswith("path,identity,expression,synthetic,source,face")
    with read_faces(output) as table:
        assert sorted(EXPRESSIONS[e] for e in table.expression) == ["anger", "happy"]
        assert table.images[0].shape == (112, 112, 3)
    pngs = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.png"))
    assert pngs == ["anger/kate_siegel_f0_original.png", "happy/paul_rudd_f0_original.png"]


def _folder_with_bad_files(root: Path, people_dir: Path, examples: Path) -> Path:
    folder = root / "mixed"
    folder.mkdir()
    shutil.copy(people_dir / "paul_rudd" / "1.jpg", folder / "good.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    data = (people_dir / "kate_siegel" / "1.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.png").write_text("not a picture at all")
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    sky = Image.open(examples / "astronaut.png").convert("RGB").crop((380, 0, 512, 132))  # flag and sky, no face
    sky.save(folder / "no_face.png")
    return folder


EXPECTED_FAILURES = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "notes.png": "not an image",
    "phone.heic": "unsupported image format",
    "no_face.png": "no face found",
}


def test_bad_files_are_reported_and_the_run_goes_on(tmp_path, people_dir):
    folder = _folder_with_bad_files(tmp_path, people_dir, REPO / "examples")
    result = _exaug("align", str(folder), "-o", str(tmp_path / "out.h5"), "--quiet")
    assert result.returncode == 0, result.stderr
    for name, reason in EXPECTED_FAILURES.items():
        assert any(name in line and reason in line for line in result.stderr.splitlines()), (name, result.stderr)
    with read_faces(tmp_path / "out.h5") as table:
        assert list(table.source) == ["good.jpg"]
        recorded = dict(table.failures)
    assert set(recorded) == set(EXPECTED_FAILURES)
    assert all(reason in recorded[name] for name, reason in EXPECTED_FAILURES.items())


def test_resuming_reads_unreadable_images_again_but_not_faceless_ones(tmp_path, people_dir):
    """Fixed since, an image is added; failing as before, it leaves a finished output as it was."""
    folder = _folder_with_bad_files(tmp_path, people_dir, REPO / "examples")
    output = tmp_path / "out.h5"
    align_dataset(folder, output, show_progress=False)
    shutil.copy(people_dir / "kate_siegel" / "1.jpg", folder / "truncated.jpg")  # the copy finished since
    summary = align_dataset(folder, output, show_progress=False)
    assert summary.retried == 4 and summary.resumed == 2  # good.jpg and no_face.png are not read again
    assert summary.faces == 1 and len(summary.failures) == 3
    with read_faces(output) as table:
        assert list(table.source) == ["good.jpg", "truncated.jpg"]
        assert set(dict(table.failures)) == set(EXPECTED_FAILURES) - {"truncated.jpg"}
        assert len(table.failures) == 4  # each still-failing image recorded once, with this run's reason
    before = (output.read_bytes(), output.stat().st_mtime_ns)
    third = align_dataset(folder, output, show_progress=False)  # the same three fail again, as they did
    assert third.retried == 3 and len(third.failures) == 3 and third.faces == 0
    assert (output.read_bytes(), output.stat().st_mtime_ns) == before  # nothing new: the output is not rewritten


@pytest.mark.parametrize("name", ["out.h5", "out"])
def test_resuming_reads_changed_images_again_and_replaces_their_faces(tmp_path, people_dir, name):
    """A photo replaced by another is read again and its new faces replace the old (a fresh run's
    faces, the old PNGs gone); one only touched or copied over itself (same bytes) is not; one
    removed keeps its faces, and the run says so."""
    folder, output = tmp_path / "in", tmp_path / name
    for person in ("kate_siegel", "paul_rudd"):
        (folder / person).mkdir(parents=True)
        shutil.copy(people_dir / person / "1.jpg", folder / person / "1.jpg")
    align_dataset(folder, output, show_progress=False)
    kate = folder / "kate_siegel" / "1.jpg"
    shutil.copy(people_dir / "kate_siegel" / "1.jpg", kate)  # the same bytes, a new modification time
    touched = align_dataset(folder, output, show_progress=False)
    assert touched.changed == 0 and touched.resumed == 2 and touched.faces == 0
    shutil.copy(people_dir / "angelina_jolie" / "1.jpg", kate)  # replaced by another photo
    replaced = align_dataset(folder, output, show_progress=False)
    assert replaced.changed == 1 and replaced.resumed == 1 and replaced.faces >= 1
    fresh = align_dataset(folder, tmp_path / f"fresh-{name}", show_progress=False)
    with read_faces(output) as table, read_faces(tmp_path / f"fresh-{name}") as expected:
        for source in ("kate_siegel/1.jpg", "paul_rudd/1.jpg"):
            rows, want = np.flatnonzero(table.source == source), np.flatnonzero(expected.source == source)
            assert len(rows) == len(want)
            # the same faces; detection batched with other images may round a pixel the other way
            np.testing.assert_allclose(table.images[rows], expected.images[want], atol=1, rtol=0)
        assert len(table) == fresh.faces == len(expected)
        if table.paths is not None:  # the folder holds exactly the PNGs its manifest lists
            assert sorted(table.paths) == sorted(str(png.relative_to(output)) for png in output.rglob("*.png"))
    result = _exaug("align", str(folder), "-o", str(output))
    assert result.returncode == 0 and "changed since" not in result.stderr
    shutil.copy(people_dir / "kate_siegel" / "1.jpg", kate)
    (folder / "paul_rudd" / "1.jpg").unlink()  # removed: its faces stay, and the run says so
    result = _exaug("align", str(folder), "-o", str(output))
    assert re.search(r"changed since, read again[ │]*1 ", result.stderr), result.stderr
    assert f"{output} holds 1 image no longer in the input (paul_rudd/1.jpg), kept as written" in \
        " ".join(result.stderr.split())
    with read_faces(output) as table:
        assert "paul_rudd/1.jpg" in table.source.tolist()


def test_align_preview_shows_the_first_faces_each_under_its_identity(tmp_path, faces_dir):
    """The sheet holds the faces as cut, 8 a row, each above its caption; a caption too long for its
    face is cut there, not run into the next; a sheet that would land in the input is refused first."""
    output, sheet = tmp_path / "out.h5", tmp_path / "sheet.png"
    align_dataset(faces_dir, output, AlignOptions(preview=sheet), show_progress=False)
    picture = np.asarray(Image.open(sheet).convert("RGB"))
    with read_faces(output) as table:
        count = len(table)
        assert count == 10 and picture.shape == (2 * (128 + 16), 8 * 128, 3)
        np.testing.assert_array_equal(picture[:128, :128], table.images[0])
        np.testing.assert_array_equal(picture[144:272, 128:256], table.images[9])
    assert (picture[144:, 2 * 128:] == 255).all()  # nothing after the last face
    assert (picture[128:144, :128] < 128).any()  # a caption under the first face

    from exaug.io.sheets import captioned_grid
    faces = np.zeros((2, 64, 64, 3), np.uint8)
    long = np.asarray(captioned_grid(faces, ["a_very_long_identity_folder_name_indeed", ""], 2))
    assert (long[64:, :64] < 128).any() and (long[64:, 64:] == 255).all()

    with pytest.raises(ExaugError, match="is inside the input"):
        align_dataset(faces_dir, tmp_path / "never.h5", AlignOptions(preview=faces_dir / "sheet.png"),
                      show_progress=False)
    assert not (tmp_path / "never.h5").exists()


def test_several_faces_given_one_identity_are_reported(tmp_path, faces_dir):
    """A group photo in an identity folder makes strangers that person; the run says which images.
    In expression folders the faces have no identity to share."""
    for layout, (group, single) in {"ids": ("team", "team"), "expressions": ("happy", "sad")}.items():
        for folder, name, photo in ((group, "group.jpg", faces_dir / "groups" / "multiface.jpg"),
                                    (single, "paul.jpg", faces_dir / "people" / "paul_rudd" / "1.jpg")):
            (tmp_path / layout / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, tmp_path / layout / folder / name)
    summary = align_dataset(tmp_path / "ids", tmp_path / "ids.h5", show_progress=False)
    assert summary.crowded == ["team/group.jpg"] and summary.faces == 7
    largest = align_dataset(tmp_path / "ids", tmp_path / "largest.h5",
                            AlignOptions(detection=DetectionOptions(faces="largest")), show_progress=False)
    assert largest.crowded == [] and largest.faces == 2
    assert align_dataset(tmp_path / "expressions", tmp_path / "expressions.h5", show_progress=False).crowded == []
    result = _exaug("align", str(tmp_path / "ids"), "-o", str(tmp_path / "cli.h5"))
    assert "1 image holds several faces, each given the image's identity (team/group.jpg)" in result.stderr


def test_running_again_resumes_and_changes_nothing(aligned_h5, faces_dir, tmp_path):
    copy = tmp_path / "again.h5"
    shutil.copy(aligned_h5, copy)
    summary = align_dataset(faces_dir, copy, show_progress=False)
    assert summary.resumed == 5 and summary.faces == 0
    with read_faces(copy) as again, read_faces(aligned_h5) as first:
        assert np.array_equal(again.images[0:10], first.images[0:10])
    other = align_dataset  # a different template is a different run: refused without --overwrite
    from exaug.errors import ExaugError
    with pytest.raises(ExaugError, match="overwrite"):
        other(faces_dir, copy, AlignOptions(template="arcface"), show_progress=False)


def test_cli_errors_are_one_clear_line(tmp_path):
    missing = _exaug("align", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o.h5"))
    assert missing.returncode == 2 and "nowhere: no such file or folder" in missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = _exaug("align", str(tmp_path / "empty"), "-o", str(tmp_path / "o.h5"))
    assert empty.returncode == 2 and "no image files found" in empty.stderr and "Traceback" not in empty.stderr
    usage = _exaug("align")
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_help_lists_exactly_the_commands_and_each_has_its_own_help():
    """``exaug --help`` names the six commands in order, nothing else, and each answers ``--help``."""
    result = _exaug("--help")
    assert result.returncode == 0
    listed = re.findall(r"^  ([a-z]+)  ", result.stdout.split("Commands:")[1], flags=re.M)  # their first column
    assert listed == ["align", "train", "augment", "merge", "video", "eval"], result.stdout
    for command in listed:
        own = CliRunner().invoke(app, [command, "--help"])
        assert own.exit_code == 0 and f"exaug {command} [OPTIONS]" in own.output, own.output


@cuda_only
def test_cuda_alignment_matches_the_cpu(faces_dir, tmp_path, aligned_h5):
    """Pinned decoding, detection and warping on the GPU give the CPU's faces."""
    output = tmp_path / "cuda.h5"
    align_dataset(faces_dir, output, AlignOptions(device="cuda"), show_progress=False)
    with read_faces(output) as gpu, read_faces(aligned_h5) as cpu:
        assert list(gpu.source) == list(cpu.source)
        assert np.abs(gpu.images[0:len(gpu)].astype(np.int16) - cpu.images[0:len(cpu)]).mean() < 2


def test_installed_console_script_reports_errors_without_a_traceback(tmp_path):
    script = Path(sys.executable).parent / "exaug"
    assert script.exists(), "the package's console script is installed beside the interpreter"
    result = subprocess.run([str(script), "augment", str(tmp_path / "missing"), "-o", str(tmp_path / "o.h5")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "missing: no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr
