"""Face tables: both forms round-trip bit-exact, survive kills, resume to the same bytes, merge, and
feed a torch Dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from exaug.data import AugmentedFaces
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.io.digest import file_stamp, same_file
from exaug.io.store import FaceRows, FaceTable, is_face_table, merge, open_writer, read_faces

SIZE = 16
RUN_KEY = {"command": "align", "size": SIZE, "template": "exaug"}
ATTRS = {"exaug_version": "test", "size": SIZE, "model_hash": "abc123", "command": ["exaug", "align", "in"]}
FORMS = ["faces.h5", "faces"]  # output names: HDF5 file, folder
HAPPY, SAD = EXPRESSIONS.index("happy"), EXPRESSIONS.index("sad")

Batch = tuple[FaceRows, list[str], list[tuple[str, str]]]


def photo_faces(people_dir: Path, count: int) -> np.ndarray:
    """Real pictures, shrunk while decoding (JPEG draft) so it stays fast."""
    faces = []
    for path in sorted(people_dir.glob("*/1.jpg"))[:count]:
        with Image.open(path) as image:
            image.draft("RGB", (SIZE * 8, SIZE * 8))
            faces.append(np.asarray(image.convert("RGB").resize((SIZE, SIZE))))
    return np.stack(faces)


def face_rows(images: np.ndarray, identity: list[str], expression: list[int], source: list[str],
              synthetic: list[bool], seed: int) -> FaceRows:
    rng = np.random.default_rng(seed)
    count = len(images)
    return FaceRows(images, identity, np.array(expression), source, np.zeros(count, np.int16), np.array(synthetic),
                    extra={"prob": rng.random(count, np.float32), "landmarks": rng.random((count, 5, 2), np.float32),
                           "transform": rng.normal(size=(count, 2, 3)).astype(np.float32)})


@pytest.fixture(scope="module")
def batches(people_dir: Path) -> list[Batch]:
    """Three commits: real photos with a synthetic face, a source that failed and one with no face,
    and faces without identity (one of unknown expression)."""
    noise = np.random.default_rng(0).integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    first = face_rows(np.concatenate([photo_faces(people_dir, 2), noise[:1]]), ["alice"] * 3, [-1, -1, HAPPY],
                      ["alice/img1.jpg", "alice/img2.jpg", "alice/img1.jpg"], [False, False, True], seed=1)
    second = face_rows(noise[1:3], ["bob", "bob"], [SAD, HAPPY], ["bob/a.png", "bob/a.png"], [False, True], seed=2)
    third = face_rows(noise[3:5], ["", ""], [HAPPY, -1], ["x.jpg", "y.jpg"], [False, False], seed=3)
    return [(first, ["alice/img1.jpg", "alice/img2.jpg"], []),
            (second, ["bob/a.png", "bob/none.png"], [("bob/broken.jpg", "cannot identify image file")]),
            (third, ["x.jpg", "y.jpg"], [])]


def write(output: Path, batches: list[Batch], *, finish: bool = True, run_key: dict[str, Any] = RUN_KEY,
          attrs: dict[str, Any] = ATTRS, overwrite: bool = False) -> None:
    writer = open_writer(output, run_key=run_key, attrs=attrs, overwrite=overwrite)
    for rows, done, failures in batches:
        writer.commit(rows, done, failures)
    if finish:
        writer.finish()


def assert_table_holds(table: FaceTable, batches: list[Batch]) -> None:
    expected = FaceRows.concat([rows for rows, _, _ in batches])
    assert len(table) == len(expected)
    np.testing.assert_array_equal(table.images[:], expected.images)
    assert table.identity.tolist() == expected.identity
    assert table.source.tolist() == expected.source
    np.testing.assert_array_equal(table.expression, expected.expression)
    np.testing.assert_array_equal(table.face, expected.face)
    np.testing.assert_array_equal(table.synthetic, expected.synthetic)
    assert table.extra.keys() == expected.extra.keys()
    for name, values in expected.extra.items():
        assert table.extra[name].dtype == values.dtype
        np.testing.assert_array_equal(table.extra[name], values)
    assert table.failures == [failure for _, _, failures in batches for failure in failures]


def assert_same_rows(a: FaceTable, b: FaceTable) -> None:
    np.testing.assert_array_equal(a.images[:], b.images[:])
    for column in ("identity", "source", "expression", "face", "synthetic"):
        assert getattr(a, column).tolist() == getattr(b, column).tolist(), column
    assert a.identities == b.identities and a.sources == b.sources
    assert {k: v.tolist() for k, v in a.extra.items()} == {k: v.tolist() for k, v in b.extra.items()}
    assert a.failures == b.failures


def snapshot(output: Path) -> dict[str, Any]:
    """Everything a user can see in an output: every dataset and attribute, or every file's bytes."""
    if output.is_dir():
        files = sorted(path for path in output.rglob("*") if path.is_file())
        return {str(path.relative_to(output)): path.read_bytes() for path in files}
    with h5py.File(output, "r") as h5:
        contents: dict[str, Any] = {f"attr {k}": np.asarray(v).tolist() for k, v in h5.attrs.items()}
        for name, dataset in h5.items():
            values = dataset.asstr()[()].tolist() if dataset.dtype == object else dataset[()].tobytes()
            contents[name] = (str(dataset.dtype), dataset.shape, values)
    return contents


def test_rows_validate_lengths_and_concatenate() -> None:
    image = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(ValueError, match="one entry per image"):
        FaceRows(image, ["a", "b"], [0], ["s"], [0], [False])
    with pytest.raises(ValueError, match="synthetic face needs"):
        FaceRows(image, ["a"], [-1], ["s"], [0], [True])
    with pytest.raises(ValueError, match="synthetic face needs"):
        FaceRows(image, ["a"], [-1], ["s"], [0], [True], {"reference": np.full(1, -1, np.int16)})
    FaceRows(image, ["a"], [-1], ["s"], [0], [True], {"reference": np.zeros(1, np.int16)})  # follows reference 0
    with pytest.raises(ValueError, match="uint8"):
        FaceRows(image.astype(np.float32), ["a"], [0], ["s"], [0], [False])
    one = FaceRows(image, ["a"], [1], ["s"], [0], [False], {"prob": np.ones(1, np.float32)})
    joined = FaceRows.concat([FaceRows.empty(SIZE, SIZE), one, one])
    assert len(joined) == 2 and joined.identity == ["a", "a"] and joined.extra["prob"].tolist() == [1, 1]
    assert joined.expression.dtype == np.int8 and joined.face.dtype == np.int16


def test_hdf5_round_trip_follows_the_contract(tmp_path: Path, batches: list[Batch]) -> None:
    output = tmp_path / "faces.h5"
    write(output, batches)
    assert not (tmp_path / "faces.h5.parts").exists()
    with read_faces(output) as table:
        assert_table_holds(table, batches)
        assert table.identities == ["alice", "bob", ""]
        assert table.attrs == {**ATTRS, "expressions": list(EXPRESSIONS)} and table.run_key == RUN_KEY
    with h5py.File(output, "r") as h5:
        assert not h5["images"].is_virtual and h5["images"].compression == "gzip"
        assert np.prod(h5["images"].chunks) <= 256 * 1024  # one random face decompresses a small chunk
        dtypes = {name: h5[name].dtype for name in ("images", "expression", "identity", "source", "face", "synthetic")}
        assert dtypes == {"images": np.uint8, "expression": np.int8, "identity": np.int32, "source": np.int32,
                          "face": np.int16, "synthetic": bool}
        assert h5["identity"][()].tolist() == [0, 0, 0, 1, 1, 2, 2]
        assert h5["sources"].asstr()[()].tolist() == ["alice/img1.jpg", "alice/img2.jpg", "bob/a.png", "x.jpg", "y.jpg"]
        assert h5["failed_sources"].asstr()[()].tolist() == ["bob/broken.jpg"]
        assert h5["landmarks"].shape == (7, 5, 2) and h5["transform"].dtype == np.float32
        assert h5.attrs["expressions"].tolist() == list(EXPRESSIONS)
        assert json.loads(h5.attrs["run_key"]) == RUN_KEY and json.loads(h5.attrs["command"]) == ATTRS["command"]
        assert h5.attrs["model_hash"] == "abc123"


def test_folder_round_trip_names_pngs_and_lists_them(tmp_path: Path, batches: list[Batch]) -> None:
    output = tmp_path / "faces"
    write(output, batches)
    expected_paths = ["alice/img1_f0_original.png", "alice/img2_f0_original.png", "alice/img1_f0_happy.png",
                      "bob/a_f0_original.png", "bob/a_f0_happy.png", "happy/x_f0_original.png",
                      "_unknown/y_f0_original.png"]
    with read_faces(output) as table:
        assert table.paths == expected_paths
        assert_table_holds(table, batches)
        assert table.attrs == ATTRS and table.run_key == RUN_KEY
    assert all((output / path).is_file() for path in expected_paths)
    assert not (output / ".exaug-parts").exists()
    manifest = (output / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,identity,expression,synthetic,source,face,landmarks,prob,transform"
    assert manifest[1].startswith("alice/img1_f0_original.png,alice,,false,alice/img1.jpg,0,")
    assert manifest[3].startswith("alice/img1_f0_happy.png,alice,happy,true,alice/img1.jpg,0,")
    assert (output / "failures.csv").read_text().splitlines() == ["source,reason",
                                                                  "bob/broken.jpg,cannot identify image file"]


@pytest.mark.parametrize("name", FORMS)
def test_unfinished_output_opens_with_every_committed_part(tmp_path: Path, batches: list[Batch], name: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / name
    write(output, batches[:2], finish=False)
    monkeypatch.chdir(tmp_path.parent)  # the master's virtual images use paths relative to itself
    with read_faces(output) as table:
        assert_table_holds(table, batches[:2])
    if name.endswith(".h5"):
        with h5py.File(output, "r") as h5:
            assert h5["images"].is_virtual and h5["images"].shape == (5, SIZE, SIZE, 3)


@pytest.mark.parametrize("name", FORMS)
def test_a_costly_publish_waits_but_every_part_is_kept_and_a_stopped_run_shows_all(
        tmp_path: Path, batches: list[Batch], name: str, monkeypatch) -> None:
    """Republishing grows with the output; when it is dear next to the time between commits it is
    deferred (here: always, after the first). The parts still hold every batch: a resumed run, a
    run stopped by an exception and a finished one all show every committed batch."""
    import exaug.io.store.parts as parts
    monkeypatch.setattr(parts, "PUBLISH_ALWAYS", 0.0)
    monkeypatch.setattr(parts, "PUBLISH_SHARE", 1e-12)
    output = tmp_path / name
    write(output, batches, finish=False)
    with read_faces(output) as table:
        assert_table_holds(table, batches[:1])  # only the first commit was published
    with open_writer(output, run_key=RUN_KEY, attrs=ATTRS) as writer:  # resuming reads the parts
        assert writer.done_sources >= {"bob/a.png", "bob/broken.jpg", "x.jpg", "y.jpg"}
        with read_faces(output) as table:  # and republishes them all
            assert_table_holds(table, batches)

    stopped = tmp_path / "stopped" / name
    with pytest.raises(KeyboardInterrupt), open_writer(stopped, run_key=RUN_KEY, attrs=ATTRS) as writer:
        for rows, done, failures in batches:
            writer.commit(rows, done, failures)
        raise KeyboardInterrupt
    with read_faces(stopped) as table:
        assert_table_holds(table, batches)


def test_sigkilled_run_leaves_an_output_that_opens_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "killed.h5"
    script = (
        "import sys, numpy as np\n"
        "from exaug.io.store import FaceRows, open_writer\n"
        "writer = open_writer(sys.argv[1], run_key={'k': 1}, attrs={'size': 8})\n"
        "for i in range(100000):\n"
        "    rows = FaceRows(np.full((4, 8, 8, 3), i % 256, np.uint8), ['p'] * 4, np.zeros(4), [f's{i}'] * 4,\n"
        "                    np.arange(4), np.zeros(4, bool))\n"
        "    writer.commit(rows, [f's{i}'], [])\n"
        "    print(i, flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "0"
        assert child.stdout.readline().strip() == "1"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with read_faces(output) as table:
        assert len(table) >= 8 and len(table) % 4 == 0
        committed = len(table) // 4
        assert table.source.tolist() == [f"s{i}" for i in range(committed) for _ in range(4)]
        np.testing.assert_array_equal(table.images[:][:, 0, 0, 0], np.repeat(np.arange(committed) % 256, 4))
    with open_writer(output, run_key={"k": 1}, attrs={"size": 8}) as writer:
        assert {"s0", "s1"} <= writer.done_sources
        parts = len(writer.done_sources)
    with read_faces(output) as table:
        assert len(table) == 4 * parts and table.source.tolist()[-1] == f"s{parts - 1}"


@pytest.mark.parametrize("name", FORMS)
def test_resumed_run_ends_identical_to_an_uninterrupted_one(tmp_path: Path, batches: list[Batch], name: str) -> None:
    whole, resumed = tmp_path / "whole" / name, tmp_path / "resumed" / name
    write(whole, batches)
    write(resumed, batches[:1], finish=False)
    writer = open_writer(resumed, run_key=RUN_KEY, attrs=ATTRS)
    assert writer.done_sources == {"alice/img1.jpg", "alice/img2.jpg"}
    for rows, done, failures in batches[1:]:
        writer.commit(rows, done, failures)
    writer.finish()
    assert snapshot(resumed) == snapshot(whole)


@pytest.mark.parametrize("name", FORMS)
def test_another_run_key_is_refused_unless_overwrite(tmp_path: Path, batches: list[Batch], name: str) -> None:
    output = tmp_path / name
    write(output, batches[:1], finish=False)
    other_key = {**RUN_KEY, "size": 32}
    with pytest.raises(ExaugError, match=rf"{name}.*different settings \(size\).*--overwrite"):
        open_writer(output, run_key=other_key, attrs=ATTRS)
    open_writer(output, run_key=RUN_KEY, attrs=ATTRS).finish()
    with pytest.raises(ExaugError, match=rf"{name}.*--overwrite"):
        open_writer(output, run_key=other_key, attrs=ATTRS)
    write(output, batches[2:], run_key=other_key, overwrite=True)
    with read_faces(output) as table:
        assert_table_holds(table, batches[2:])
        assert table.run_key == other_key


@pytest.mark.parametrize("name", FORMS)
def test_finished_output_of_the_same_run_is_left_alone(tmp_path: Path, batches: list[Batch], name: str) -> None:
    output = tmp_path / name
    write(output, batches)
    before = snapshot(output)
    with open_writer(output, run_key=RUN_KEY, attrs=ATTRS) as writer:
        # every completed source is recorded, one that gave neither rows nor a failure too
        assert writer.done_sources == {source for _, done, failures in batches
                                       for source in [*done, *(s for s, _ in failures)]}
    assert snapshot(output) == before


@pytest.mark.parametrize("name", FORMS)
def test_new_sources_for_a_finished_output_are_appended(tmp_path: Path, batches: list[Batch], name: str) -> None:
    whole, grown = tmp_path / "whole" / name, tmp_path / "grown" / name
    write(whole, batches)
    write(grown, batches[:2])
    write(grown, batches[2:])
    with read_faces(whole) as expected, read_faces(grown) as table:
        assert_same_rows(table, expected)


@pytest.mark.parametrize("name", FORMS)
def test_a_failed_source_committed_again_replaces_its_failure(tmp_path: Path, batches: list[Batch],
                                                             name: str) -> None:
    """A resumed run retries an unreadable image: its rows (or its new failure) replace the old record,
    whether the first run finished or was killed, and the source is listed done once."""
    output = tmp_path / name
    write(output, batches)  # bob/broken.jpg failed
    fixed = face_rows(batches[2][0].images[:1], ["bob"], [SAD], ["bob/broken.jpg"], [False], seed=4)
    with open_writer(output, run_key=RUN_KEY, attrs=ATTRS) as writer:
        assert writer.failures == {"bob/broken.jpg": "cannot identify image file"}
        writer.commit(fixed, ["bob/broken.jpg"])
        with pytest.raises(ValueError, match="committed before"):  # only a failure may be committed again
            writer.commit(fixed, ["bob/broken.jpg"])
    with read_faces(output) as table:
        assert table.failures == []
        assert table.source.tolist()[-1] == "bob/broken.jpg" and table.identity.tolist()[-1] == "bob"
        np.testing.assert_array_equal(table.images[len(table) - 1], fixed.images[0])
        assert table.completed_sources().count("bob/broken.jpg") == 1

    again = tmp_path / "again" / name  # killed before finishing, then the retry fails once more
    write(again, batches, finish=False)
    with open_writer(again, run_key=RUN_KEY, attrs=ATTRS) as writer:
        writer.commit(FaceRows.empty(), ["bob/broken.jpg"], [("bob/broken.jpg", "truncated file")])
    with read_faces(again) as table:
        assert table.failures == [("bob/broken.jpg", "truncated file")]
        assert len(table) == sum(len(rows) for rows, _, _ in batches)


@pytest.mark.parametrize("name", FORMS)
def test_a_changed_source_committed_again_replaces_its_rows(tmp_path: Path, batches: list[Batch], name: str) -> None:
    """An image replaced since its faces were written is read again: once the writer is told
    (``redo``), its new rows replace the old ones in the visible output of a killed run, in the
    final output and in the stamps, the rest untouched; in a folder its old PNGs are deleted."""
    stamps = {"alice/img1.jpg": "10 1 " + "a" * 64, "alice/img2.jpg": "20 2 " + "b" * 64}
    new_face = face_rows(batches[2][0].images[:1], ["alice"], [-1], ["alice/img1.jpg"], [False], seed=5)
    first = batches[0][0]  # its row 1 is alice/img2.jpg, which stays
    img2 = FaceRows(first.images[1:2], first.identity[1:2], first.expression[1:2], first.source[1:2], first.face[1:2],
                    first.synthetic[1:2], {name: values[1:2] for name, values in first.extra.items()})
    expected = FaceRows.concat([img2, batches[1][0], batches[2][0], new_face])

    def redo(output: Path, finish: bool) -> None:
        writer = open_writer(output, run_key=RUN_KEY, attrs=ATTRS)
        assert writer.stamps == stamps
        with pytest.raises(ValueError, match="committed before"):  # only once told it changed
            writer.commit(new_face, ["alice/img1.jpg"])
        writer.redo({"alice/img1.jpg"})
        writer.commit(new_face, ["alice/img1.jpg"], stamps={"alice/img1.jpg": "11 3 " + "c" * 64})
        if finish:
            writer.finish()
        else:
            writer._lock.release()  # killed: the parts and the visible output stay as they are

    def assert_replaced(output: Path) -> None:
        with read_faces(output) as table:
            assert len(table) == len(expected)
            np.testing.assert_array_equal(table.images[:], expected.images)
            assert table.source.tolist() == expected.source and table.identity.tolist() == expected.identity
            np.testing.assert_array_equal(table.extra["prob"], expected.extra["prob"])
            assert table.completed_sources().count("alice/img1.jpg") == 1
            assert table.stamps == {**stamps, "alice/img1.jpg": "11 3 " + "c" * 64}
            if table.paths is not None:  # the folder holds exactly the PNGs its manifest lists
                assert sorted(table.paths) == sorted(str(path.relative_to(output)) for path in output.rglob("*.png")
                                                     if ".exaug-parts" not in path.parts)

    finished, killed = tmp_path / "finished" / name, tmp_path / "killed" / name
    for output, finish in ((finished, True), (killed, False)):
        writer = open_writer(output, run_key=RUN_KEY, attrs=ATTRS)
        for number, (rows, done, failures) in enumerate(batches):
            writer.commit(rows, done, failures, stamps=stamps if number == 0 else None)
        writer.finish() if finish else writer._lock.release()
        redo(output, finish)
        assert_replaced(output)
    open_writer(killed, run_key=RUN_KEY, attrs=ATTRS).finish()
    assert_replaced(killed)
    with read_faces(finished) as a, read_faces(killed) as b:
        assert_same_rows(a, b)


def test_commit_must_hold_whole_new_sources(tmp_path: Path, batches: list[Batch]) -> None:
    writer = open_writer(tmp_path / "faces.h5", run_key=RUN_KEY, attrs=ATTRS)
    rows, done, failures = batches[0]
    with pytest.raises(ValueError, match="not in done"):
        writer.commit(rows, done[:1], failures)
    writer.commit(rows, done, failures)
    with pytest.raises(ValueError, match="committed before"):
        writer.commit(rows, done, failures)
    small = FaceRows(np.zeros((1, 8, 8, 3), np.uint8), ["a"], [0], ["z.jpg"], [0], [False])
    with pytest.raises(ValueError, match="16x16"):
        writer.commit(small, ["z.jpg"], [])


def test_folder_names_never_collide(tmp_path: Path) -> None:
    images = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    rows = FaceRows(images, ["a", "a"], [0, 0], ["a/img.jpg", "a/img.png"], [0, 0], [False, False])
    write(tmp_path / "faces", [(rows, ["a/img.jpg", "a/img.png"], [])])
    assert read_faces(tmp_path / "faces").paths == ["a/img_f0_original.png", "a/img-2_f0_original.png"]


def test_overwrite_never_deletes_a_folder_exaug_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    for overwrite in (False, True):
        with pytest.raises(ExaugError, match="not written by exaug"):
            open_writer(tmp_path / "photos", run_key=RUN_KEY, attrs=ATTRS, overwrite=overwrite)
    assert (tmp_path / "photos" / "keep.jpg").exists()


@pytest.mark.parametrize("name", FORMS)
def test_empty_output_is_valid(tmp_path: Path, name: str) -> None:
    output = tmp_path / name
    failed = [("bad.jpg", "no face")]
    write(output, [(FaceRows.empty(), ["bad.jpg"], failed)])
    assert is_face_table(output)
    with read_faces(output) as table:
        assert len(table) == 0 and table.failures == failed and table.image_size == (SIZE, SIZE)
        assert table.images[:].shape == (0, SIZE, SIZE, 3)
    if name.endswith(".h5"):
        with h5py.File(output, "r") as h5:
            shapes = {name: h5[name].shape for name in ("images", "identity", "identities", "expression", "face")}
            assert shapes == {"images": (0, SIZE, SIZE, 3), "identity": (0,), "identities": (0,),
                              "expression": (0,), "face": (0,)}


def test_merge_equals_one_writer_writing_everything(tmp_path: Path, batches: list[Batch]) -> None:
    write(tmp_path / "whole.h5", batches)
    write(tmp_path / "shard0.h5", batches[:2])
    write(tmp_path / "shard1", batches[2:])  # shards may be folders
    inputs = [tmp_path / "shard0.h5", tmp_path / "shard1"]
    merge(inputs, tmp_path / "merged.h5")
    with read_faces(tmp_path / "whole.h5") as whole, read_faces(tmp_path / "merged.h5") as merged:
        assert_same_rows(merged, whole)
        assert merged.attrs["merged_from"] == [str(path) for path in inputs]
        assert merged.attrs["model_hash"] == ATTRS["model_hash"]


def test_merge_refuses_different_models_and_non_hdf5_output(tmp_path: Path, batches: list[Batch]) -> None:
    write(tmp_path / "a.h5", batches[:1])
    write(tmp_path / "b.h5", batches[1:], attrs={**ATTRS, "model_hash": "def456"})
    with pytest.raises(ExaugError, match=r"model_hash differs: .*a\.h5 has abc123, .*b\.h5 has def456"):
        merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "merged.h5")
    with pytest.raises(ExaugError, match="h5"):
        merge([tmp_path / "a.h5"], tmp_path / "merged")
    assert not (tmp_path / "merged.h5").exists()


@pytest.mark.parametrize("name", FORMS)
def test_augmented_faces_reads_either_form(tmp_path: Path, batches: list[Batch], name: str) -> None:
    output = tmp_path / name
    write(output, batches)
    faces = AugmentedFaces(output)
    assert len(faces) == 7 and faces.identities == ["alice", "bob", ""] and faces.expressions == list(EXPRESSIONS)
    image, identity, expression, synthetic = faces[3]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    torch.testing.assert_close(image, torch.from_numpy(batches[1][0].images[0]).permute(2, 0, 1) / 255)
    assert (identity, expression, synthetic) == (1, SAD, False)
    happy_synthetic = AugmentedFaces(output, transform=np.asarray, expressions=["happiness"], synthetic=True)
    assert len(happy_synthetic) == 2
    picture, *labels = happy_synthetic[1]
    np.testing.assert_array_equal(picture, batches[1][0].images[1])
    assert labels == [1, HAPPY, True]


def test_augmented_faces_under_dataloader_workers(tmp_path: Path, batches: list[Batch]) -> None:
    output = tmp_path / "faces.h5"
    write(output, batches)
    faces = AugmentedFaces(output)
    faces[0]  # a handle opened before the workers start must not leak into them
    loader = torch.utils.data.DataLoader(faces, batch_size=2, num_workers=2)
    images, identities, expressions, synthetic = (torch.cat(column) for column in zip(*loader))
    expected = FaceRows.concat([rows for rows, _, _ in batches])
    torch.testing.assert_close(images, torch.from_numpy(expected.images).permute(0, 3, 1, 2) / 255)
    assert identities.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert expressions.tolist() == expected.expression.tolist()
    assert synthetic.tolist() == expected.synthetic.tolist()


def test_a_file_stamp_tells_changed_content_from_a_new_modification_time(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"first version")
    stamp = file_stamp(photo)
    assert same_file(stamp, photo)
    os.utime(photo, ns=(1, 1))  # touched, or copied without its times: hashed, the same bytes
    assert same_file(stamp, photo)
    photo.write_bytes(b"other version")  # as long, and hashed: other bytes
    os.utime(photo, ns=(2, 2))
    assert not same_file(stamp, photo)
    assert not same_file(stamp, tmp_path / "gone.jpg")  # a file that cannot be read is read again
    assert not same_file("13 not-a-time", photo)  # a hand-edited stamp too


def test_merging_outputs_of_two_inputs_keeps_rows_of_like_named_sources(tmp_path: Path, batches: list[Batch]) -> None:
    """Relative names repeat across inputs (alice/img1.jpg in two datasets): merge keeps every row,
    where one run's parts keep only a source's latest."""
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    write(first, batches, run_key={**RUN_KEY, "input": "/data/a"})
    write(second, batches, run_key={**RUN_KEY, "input": "/data/b"})
    merge([first, second], tmp_path / "merged.h5")
    with read_faces(tmp_path / "merged.h5") as table:
        assert_table_holds(table, batches + batches)
