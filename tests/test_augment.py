"""``exaug augment``: the output contract, never losing work, shards, and reading it back."""

from __future__ import annotations

import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, cuda_only, detail as face_detail
from exaug.data import AugmentedFaces
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.io.store import merge, read_faces
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.align import align_dataset, AlignOptions
from exaug.io.digest import file_hash
from exaug.pipelines.augment import AugmentOptions, augment_dataset
from exaug.pipelines.stages import NO_FACE


@pytest.fixture(scope="module")
def generator(test_checkpoint) -> ExpressionGenerator:
    return ExpressionGenerator.load(test_checkpoint, "cpu")


@pytest.fixture(scope="module")
def model_hash(test_checkpoint) -> str:
    return file_hash(test_checkpoint)


@pytest.fixture(scope="module")
def augmented_h5(tmp_path_factory, faces_dir, generator, model_hash) -> Path:
    output = tmp_path_factory.mktemp("augment") / "out.h5"
    augment_dataset(faces_dir, output, generator, model_hash, show_progress=False, command="exaug augment test")
    return output


def _datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as h5:
        return {name: h5[name][()] for name in h5}


def test_hdf5_contract(augmented_h5, model_hash):
    with h5py.File(augmented_h5) as h5:
        n = 10 * 9  # ten faces, each original + eight expressions
        expected = {"images": ((n, 64, 64, 3), np.uint8), "expression": ((n,), np.int8),
                    "identity": ((n,), np.int32), "source": ((n,), np.int32), "face": ((n,), np.int16),
                    "synthetic": ((n,), np.bool_)}
        for name, (shape, dtype) in expected.items():
            assert h5[name].shape == shape and h5[name].dtype == dtype, name
        assert h5["images"].chunks is not None and h5["images"].compression is not None
        assert list(h5.attrs["expressions"]) == list(EXPRESSIONS)
        assert h5.attrs["model_hash"] == model_hash and h5.attrs["exaug_version"]
        assert h5.attrs["command"] == "exaug augment test" and int(h5.attrs["size"]) == 64
        identities = [s.decode() if isinstance(s, bytes) else s for s in h5["identities"][()]]
        sources = [s.decode() if isinstance(s, bytes) else s for s in h5["sources"][()]]
        expression, synthetic = h5["expression"][()], h5["synthetic"][()]
        face, source = h5["face"][()], h5["source"][()]
        images = h5["images"][()]
    assert set(identities) == {"groups", "angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"}
    assert set(sources) == {"groups/multiface.jpg"} | {f"people/{p}/1.jpg" for p in
                                                       ["angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"]}
    # per face: the original (unknown expression) then the eight targets, in canonical order
    groups = expression.reshape(10, 9)
    assert (groups[:, 0] == -1).all() and (groups[:, 1:] == np.arange(8)).all()
    assert (synthetic.reshape(10, 9) == [False] + [True] * 8).all()
    assert sorted(face[source == sources.index("groups/multiface.jpg")][::9]) == list(range(6))
    # generated faces differ from their original; a luma model keeps the original's colour (chroma)
    originals, generated = images.reshape(10, 9, 64, 64, 3)[:, :1], images.reshape(10, 9, 64, 64, 3)[:, 1:]
    assert np.abs(generated.astype(int) - originals).mean() > 2


def test_folder_contract_is_what_imagefolder_reads(tmp_path, faces_dir, generator, model_hash):
    from torchvision.datasets import ImageFolder

    output = tmp_path / "out"
    augment_dataset(faces_dir / "people", output, generator, model_hash,
                    AugmentOptions(expressions=["happy", "sad"]), show_progress=False)
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.png"))
    assert files[:3] == ["angelina_jolie/1_f0_happy.png", "angelina_jolie/1_f0_original.png", "angelina_jolie/1_f0_sad.png"]
    assert len(files) == 4 * 3
    header = (output / "manifest.csv").read_text().splitlines()[0]
    assert header == "path,identity,expression,synthetic,source,face"
    folder = ImageFolder(str(output))
    assert folder.classes == ["angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"] and len(folder) == 12


def test_augmented_faces_reads_both_forms(augmented_h5, tmp_path, faces_dir, generator, model_hash):
    folder = tmp_path / "folder"
    augment_dataset(faces_dir, folder, generator, model_hash, show_progress=False)
    for path in (augmented_h5, folder):
        dataset = AugmentedFaces(path)
        assert len(dataset) == 90
        image, identity, expression, synthetic = dataset[1]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        assert dataset.identities[identity] in {"groups", "angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"}
        assert expression == 0 and synthetic
        happy = AugmentedFaces(path, expressions=["happy"])
        assert len(happy) == 10 and all(happy[i][2] == 1 for i in range(len(happy)))


_KILLABLE_RUN = """
import sys
from pathlib import Path
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.augment import AugmentOptions, augment_dataset
generator = ExpressionGenerator.load(sys.argv[1], "cpu")
augment_dataset(Path(sys.argv[2]), Path(sys.argv[3]), generator, sys.argv[4], AugmentOptions(batch_size=1),
                show_progress=False)
"""


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, faces_dir, generator, model_hash, test_checkpoint):
    whole = tmp_path / "whole.h5"
    augment_dataset(faces_dir, whole, generator, model_hash, AugmentOptions(batch_size=1), show_progress=False)

    killed = tmp_path / "killed.h5"
    script = tmp_path / "run.py"
    script.write_text(_KILLABLE_RUN)
    process = subprocess.Popen([sys.executable, str(script), str(test_checkpoint), str(faces_dir), str(killed), model_hash],
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    parts = Path(f"{killed}.parts")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(parts.glob("part-*.h5"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    with read_faces(killed) as partial:  # the killed output opens and holds the committed batches
        committed = len(partial)
        assert 0 < committed < 90 and len(partial.completed_sources()) >= 1  # part 2 may not be published yet

    summary = augment_dataset(faces_dir, killed, generator, model_hash, AugmentOptions(batch_size=1), show_progress=False)
    assert summary.resumed >= 1
    assert not parts.exists()
    resumed, uninterrupted = _datasets(killed), _datasets(whole)
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert np.array_equal(resumed[name], uninterrupted[name]), name


@pytest.mark.parametrize("batch_size, tolerance", [(1, 0), (16, 1)])
def test_shards_merged_equal_a_single_run(tmp_path, faces_dir, generator, model_hash, batch_size, tolerance):
    """Exactly equal when batches hold the same faces; otherwise the CPU's convolutions may round a
    pixel by one grey level depending on how many faces share a forward pass. The parts are joined
    by the shard index each records, whatever order they are given in (named last shard first, they
    were joined that way); one shard alone is refused, naming the one missing."""
    single = tmp_path / "single.h5"
    augment_dataset(faces_dir, single, generator, model_hash, AugmentOptions(batch_size=batch_size), show_progress=False)
    shards = []
    for index in range(2):
        shard = tmp_path / f"shard{index}.h5"
        augment_dataset(faces_dir, shard, generator, model_hash,
                        AugmentOptions(batch_size=batch_size, num_shards=2, shard_index=index), show_progress=False)
        shards.append(shard)
    assert 0 < len(read_faces(shards[0])) < 90
    merged = tmp_path / "merged.h5"
    with pytest.raises(ExaugError, match=r"incomplete set of shards .*: shard 0 of 2 is missing \(.*shard1.h5 is "
                                         r"shard 1 of 2\)"):
        merge(shards[1:], merged)
    assert not merged.exists()
    merge(shards[::-1], merged)
    merged_data, single_data = _datasets(merged), _datasets(single)
    assert merged_data.keys() == single_data.keys()
    for name in single_data:
        if name != "images":
            assert np.array_equal(merged_data[name], single_data[name]), name
    difference = np.abs(merged_data["images"].astype(np.int64) - single_data["images"])
    assert difference.max() <= tolerance


def test_a_shard_names_only_images_gone_from_the_input(tmp_path, people_dir, generator, model_hash):
    """Images added to the input move the shards' boundaries: an image of this shard's output now in
    the other shard is not reported missing; one deleted from the input is."""
    folder = tmp_path / "in"
    shutil.copytree(people_dir, folder)
    options = AugmentOptions(num_shards=2, shard_index=0)
    first = augment_dataset(folder, tmp_path / "shard0.h5", generator, model_hash, options, show_progress=False)
    assert first.sources == 2 and first.gone == []  # angelina_jolie, kate_siegel
    shutil.copytree(folder / "angelina_jolie", folder / "adam")  # sorts first: kate_siegel moves to shard 1
    moved = augment_dataset(folder, tmp_path / "shard0.h5", generator, model_hash, options, show_progress=False)
    assert moved.gone == [] and moved.resumed == 1
    shutil.rmtree(folder / "angelina_jolie")
    gone = augment_dataset(folder, tmp_path / "shard0.h5", generator, model_hash, options, show_progress=False)
    assert gone.gone == ["angelina_jolie/1.jpg"]


def test_a_different_model_is_not_mixed_in(augmented_h5, tmp_path, faces_dir, generator):
    copy = tmp_path / "copy.h5"
    copy.write_bytes(augmented_h5.read_bytes())
    with pytest.raises(ExaugError, match="overwrite"):
        augment_dataset(faces_dir, copy, generator, "another-model-hash", show_progress=False)
    again = augment_dataset(faces_dir, copy, generator, "another-model-hash", overwrite=True, show_progress=False)
    assert again.faces == 90


def test_aligned_hdf5_input_skips_detection(tmp_path, faces_dir, generator, model_hash, augmented_h5):
    aligned = tmp_path / "aligned.h5"
    align_dataset(faces_dir, aligned, AlignOptions(size=64), show_progress=False)
    output = tmp_path / "from_aligned.h5"
    augment_dataset(aligned, output, generator, model_hash, show_progress=False)
    assert np.array_equal(_datasets(output)["images"], _datasets(augmented_h5)["images"])
    wrong = tmp_path / "arcface.h5"
    align_dataset(faces_dir / "people", wrong, AlignOptions(template="arcface"), show_progress=False)
    with pytest.raises(ExaugError, match="re-run exaug align"):
        augment_dataset(wrong, tmp_path / "never.h5", generator, model_hash, show_progress=False)
    assert not (tmp_path / "never.h5").exists()


def test_bad_inputs_are_reported_and_recorded(tmp_path, people_dir, generator, model_hash):
    folder = tmp_path / "in"
    (folder / "alice").mkdir(parents=True)
    (folder / "alice" / "1.jpg").write_bytes((people_dir / "paul_rudd" / "1.jpg").read_bytes())
    (folder / "alice" / "broken.jpg").write_bytes(b"")
    summary = augment_dataset(folder, tmp_path / "out.h5", generator, model_hash,
                              AugmentOptions(expressions=["happy"]), show_progress=False)
    assert summary.failures == [("alice/broken.jpg", "empty file (0 bytes)")]
    with read_faces(tmp_path / "out.h5") as table:
        assert table.failures == [("alice/broken.jpg", "empty file (0 bytes)")] and len(table) == 2


def test_cli_preview_sheet(tmp_path, test_checkpoint):
    sheet = tmp_path / "sheet.png"
    result = subprocess.run([sys.executable, "-m", "exaug", "augment", str(REPO / "examples"), "-o", str(tmp_path / "o.h5"),
                             "--emotion", "happy,sad", "--model", str(test_checkpoint), "--preview", str(sheet), "-q"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    with Image.open(sheet) as image:  # two example faces x (original + 2 targets), under a label row
        assert image.size == (3 * 64, 16 + 2 * 64)


def test_the_short_command_writes_input_augmented_h5_in_the_current_folder(tmp_path, test_checkpoint):
    """`exaug augment ./faces --all-emotions` with no -o: the input's name + .augmented.h5 where the
    user is, the input untouched; run again, the same file is found and resumed; shards get parts,
    which `exaug merge` without -o joins, in whatever order they are named, into the name a single run
    gets; one part alone is refused in one line naming the shard missing."""
    examples = sorted(path.name for path in (REPO / "examples").iterdir())
    command = [sys.executable, "-m", "exaug", "augment", str(REPO / "examples"), "--emotion", "happy",
               "--model", str(test_checkpoint), "-q"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["examples.augmented.h5"]
    with read_faces(tmp_path / "examples.augmented.h5") as table:
        assert sorted(table.source) == ["astronaut.png", "astronaut.png", "grace_hopper.jpg", "grace_hopper.jpg"]
    assert sorted(path.name for path in (REPO / "examples").iterdir()) == examples
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already done (resumed)" in again.stderr, again.stderr
    (tmp_path / "examples.augmented.h5").rename(tmp_path / "single.h5")
    for index in (0, 1):
        part = subprocess.run(command + ["--num-shards", "2", "--shard-index", str(index)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert part.returncode == 0, part.stderr
    parts = [f"examples.augmented.part{index}of2.h5" for index in (0, 1)]
    alone = subprocess.run([sys.executable, "-m", "exaug", "merge", parts[0]], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert alone.returncode == 2 and len(alone.stderr.strip().splitlines()) == 1, alone.stderr
    assert "shard 1 of 2 is missing" in alone.stderr and not (tmp_path / "examples.augmented.h5").exists()
    merged = subprocess.run([sys.executable, "-m", "exaug", "merge", *parts[::-1]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert merged.returncode == 0, merged.stderr
    with read_faces(tmp_path / "examples.augmented.h5") as joined, read_faces(tmp_path / "single.h5") as single:
        assert list(joined.source) == list(single.source) and len(joined) == len(single)
    odd = subprocess.run([sys.executable, "-m", "exaug", "merge", parts[0], "single.h5"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert odd.returncode == 2 and "give --output" in odd.stderr and len(odd.stderr.strip().splitlines()) == 1


def _refused(tmp_path: Path, test_checkpoint: Path, *options: str) -> str:
    """Run ``exaug augment`` on the examples with ``options``: the one-line error it stops with
    (exit code 2 in a terminal), having written nothing."""
    from typer.testing import CliRunner

    from exaug.cli import app

    result = CliRunner().invoke(app, ["augment", str(REPO / "examples"), "-o", str(tmp_path / "o.h5"), "--model",
                                      str(test_checkpoint), "-q", *options])
    assert isinstance(result.exception, ExaugError), result.output
    assert list(tmp_path.iterdir()) == []
    message = str(result.exception)
    assert "\n" not in message
    return message


def test_cli_shard_counts_below_one_are_refused_as_such(tmp_path, test_checkpoint):
    """--num-shards 0 said "--shard-index must be in 0..-1": the count is what is wrong."""
    for count in ("0", "-1"):
        refused = _refused(tmp_path, test_checkpoint, "--num-shards", count)
        assert refused == f"--num-shards must be at least 1, not {count}"
    assert _refused(tmp_path, test_checkpoint, "--num-shards", "2", "--shard-index", "2") == \
        "--shard-index must be in 0..1 for --num-shards 2 (got 2)"


def test_cli_an_empty_emotion_list_is_refused_not_taken_for_all_eight(tmp_path, test_checkpoint):
    """`--emotion ""` (an empty shell variable) wrote all eight expressions; --all-emotions asks for those."""
    for spec in ("", " , "):
        assert _refused(tmp_path, test_checkpoint, "--emotion", spec).startswith(
            "--emotion: no expression given; name one or more of neutral, happy,")
    assert _refused(tmp_path, test_checkpoint, "--emotion", "", "--all-emotions") == \
        "give either --all-emotions or --emotion, not both"
    assert "without --emotion" in _refused(tmp_path, test_checkpoint, "--emotion", "", "--like",
                                           str(REPO / "examples" / "astronaut.png"))


def test_an_emotion_list_is_a_set_stored_in_canonical_order_whatever_order_it_is_typed(tmp_path, test_checkpoint):
    """`--emotion angry,surprised,Happiness` wrote each face's rows as anger, surprise, happy, not in
    the canonical order the output format promises, and the same set typed in another order was
    refused on resume. Its run key is now what a list typed in canonical order always wrote, so such
    outputs resume too."""
    from typer.testing import CliRunner

    from exaug.cli import app

    output = tmp_path / "o.h5"

    def augment(emotions: str) -> None:
        result = CliRunner().invoke(app, ["augment", str(REPO / "examples"), "-o", str(output), "--emotion", emotions,
                                          "--model", str(test_checkpoint), "-q"])
        assert result.exit_code == 0 and result.exception is None, result.output

    augment("angry,surprised,Happiness")
    happy, surprise, anger = (EXPRESSIONS.index(name) for name in ("happy", "surprise", "anger"))
    with read_faces(output) as table:
        assert table.expression.tolist() == [-1, happy, surprise, anger] * 2  # the two example faces
        assert table.run_key["expressions"] == ["happy", "surprise", "anger"]
        written = table.images[0:len(table)]
    modified = output.stat().st_mtime_ns
    for emotions in ("happy,surprise,anger", "anger,happy,surprise"):  # resumed: finished, left as it was
        augment(emotions)
        assert output.stat().st_mtime_ns == modified
    with read_faces(output) as table:
        assert np.array_equal(table.images[0:len(table)], written)


def test_cli_detection_options_reach_the_detector(tmp_path, test_checkpoint):
    """The examples' faces are about 200 px: a 1000 px minimum finds none, and says so for each image."""
    output = tmp_path / "o.h5"
    result = subprocess.run([sys.executable, "-m", "exaug", "augment", str(REPO / "examples"), "-o", str(output),
                             "--emotion", "happy", "--model", str(test_checkpoint), "--min-face-size", "1000",
                             "--max-side", "512", "--threshold", "0.95", "-q"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    with read_faces(output) as table:
        assert len(table) == 0
        assert sorted(table.failures) == [("astronaut.png", NO_FACE), ("grace_hopper.jpg", NO_FACE)]


def test_without_a_model_the_error_says_how_to_get_one(monkeypatch, tmp_path):
    from exaug.model import default

    monkeypatch.setattr(default, "DEFAULT_MODEL", tmp_path / "absent.pt")
    with pytest.raises(ExaugError, match="exaug train"):
        default.model_path(None)
    with pytest.raises(ExaugError, match="no such model"):
        default.model_path(tmp_path / "typo.pt")


@cuda_only
def test_cuda_augment_matches_the_cpu(tmp_path, faces_dir, test_checkpoint, model_hash, augmented_h5):
    """bf16 autocast on the GPU stays within a few grey levels of the CPU's fp32 faces."""
    output = tmp_path / "cuda.h5"
    augment_dataset(faces_dir, output, ExpressionGenerator.load(test_checkpoint, "cuda"), model_hash, show_progress=False)
    gpu, cpu = _datasets(output), _datasets(augmented_h5)
    assert np.array_equal(gpu["expression"], cpu["expression"]) and np.array_equal(gpu["source"], cpu["source"])
    assert np.abs(gpu["images"].astype(np.int16) - cpu["images"]).mean() < 4


def test_guided_model_renders_a_larger_size_from_the_photo_not_from_its_own_128_pixels(tmp_path, people_dir):
    from exaug.model.default import DEFAULT_MODEL

    guided = ExpressionGenerator.load(DEFAULT_MODEL, "cpu")
    outputs = {}
    for size in (128, 256):
        outputs[size] = tmp_path / f"out{size}.h5"
        augment_dataset(people_dir, outputs[size], guided, "default", AugmentOptions(expressions=["happy"], size=size),
                        show_progress=False)
    def detail(images: np.ndarray) -> torch.Tensor:
        return face_detail(torch.from_numpy(images).permute(0, 3, 1, 2))

    with read_faces(outputs[128]) as small, read_faces(outputs[256]) as large:
        assert large.images[0:1].shape[1:3] == (256, 256) and len(large) == len(small)
        big, synthetic = large.images[0:len(large)], large.synthetic[0:len(large)]
        upscaled = torch.nn.functional.interpolate(torch.from_numpy(small.images[0:len(small)]).permute(0, 3, 1, 2).float(),
                                                   size=256, mode="bicubic", align_corners=False).clamp(0, 255)
    generated, originals = detail(big[synthetic]), detail(big[~synthetic])
    assert (generated > 0.65 * originals).all()
    assert (generated > 1.5 * detail(upscaled.permute(0, 2, 3, 1).numpy()[synthetic])).all()


def test_copies_of_faces_the_model_leaves_keep_their_own_label(tmp_path, ckplus_dir, monkeypatch):
    """The guided model leaves faces in profile or tilted steeply as they are: their 'happy' and
    'sad' copies would be mislabelled training data, so they keep the original's label. Every face
    is made to count as in profile here by moving the turn fade below any real turn."""
    import shutil

    from exaug.model import regions
    from exaug.model.default import DEFAULT_MODEL

    for name in sorted((ckplus_dir / "surprise").glob("*.png"))[:2]:
        (tmp_path / "in" / "surprise").mkdir(parents=True, exist_ok=True)
        shutil.copy(name, tmp_path / "in" / "surprise" / name.name)
    guided = ExpressionGenerator.load(DEFAULT_MODEL, "cpu")
    options = AugmentOptions(expressions=["happy", "sad"])
    surprise, happy, sad = (EXPRESSIONS.index(name) for name in ("surprise", "happy", "sad"))

    def rows(output: Path) -> tuple[np.ndarray, np.ndarray]:
        augment_dataset(tmp_path / "in", output, guided, "default", options, show_progress=False)
        with read_faces(output) as table:
            return table.images[0:len(table)], table.expression[0:len(table)]

    images, labels = rows(tmp_path / "moved.h5")
    assert labels.tolist() == [surprise, happy, sad] * 2
    assert all(not np.array_equal(images[i], images[i + k]) for i in (0, 3) for k in (1, 2))
    monkeypatch.setattr(regions, "TURNED", -2.0)
    monkeypatch.setattr(regions, "PROFILE", -1.0)
    images, labels = rows(tmp_path / "left.h5")
    assert labels.tolist() == [surprise] * 6
    assert all(np.array_equal(images[i], images[i + k]) for i in (0, 3) for k in (1, 2))


def test_an_unlabelled_face_the_model_leaves_is_written_once_without_copies(tmp_path, multiface_jpg):
    """A face the model leaves as it is keeps its own label on its copies; a photo's face with no
    label has none to give them, and unlabelled duplicates would say nothing of it: it is written
    once, as the original. Augmenting the shared group shot, whose faces carry no label, stopped
    with a traceback on its turned face. The preview sheet shows the faces that have copies."""
    from exaug.model.default import DEFAULT_MODEL
    from exaug.pipelines.augment import preview_sheet

    guided = ExpressionGenerator.load(DEFAULT_MODEL, "cpu")
    output = tmp_path / "group.h5"
    augment_dataset(multiface_jpg, output, guided, "default", AugmentOptions(expressions=["happy", "sad"]),
                    show_progress=False)
    with read_faces(output) as table:
        images, labels = table.images[0:len(table)], table.expression[0:len(table)].tolist()
        synthetic, faces = table.synthetic[0:len(table)].tolist(), table.face[0:len(table)].tolist()
    rows_of = {face: [row for row in range(len(faces)) if faces[row] == face] for face in sorted(set(faces))}
    once = [rows[0] for rows in rows_of.values() if len(rows) == 1]
    copied = [rows for rows in rows_of.values() if len(rows) == 3]
    assert once and copied and len(once) + len(copied) == len(rows_of)
    happy, sad = EXPRESSIONS.index("happy"), EXPRESSIONS.index("sad")
    assert all([labels[row] for row in rows] == [-1, happy, sad] for rows in copied)
    assert all(synthetic[row] is (row != rows[0]) for rows in copied for row in rows)
    assert all(labels[row] == -1 and not synthetic[row] for row in once)
    unchanged = guided.generate(torch.from_numpy(images[once]).permute(0, 3, 1, 2), "happy")
    assert torch.equal(unchanged.permute(0, 2, 3, 1), torch.from_numpy(images[once])), "the model leaves these faces"
    sheet = np.asarray(preview_sheet(output, 8))
    assert sheet.shape[1] > 2.5 * sheet.shape[0] / len(copied), "each shown face: the original and its two copies"
