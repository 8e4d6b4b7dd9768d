"""``--like REF`` on augment and video: every face takes the expression of another person's face, and
the output says which; the intensity range each model takes. Real CK+ faces of people the bundled
model held out in training, measured with the face mesh."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from exaug.cli import app
from exaug.errors import ExaugError
from exaug.faces.align import FaceAligner
from exaug.faces.detect import DetectionOptions
from exaug.faces.mesh import LOWER_LIP_INNER, UPPER_LIP_INNER
from exaug.io.digest import file_hash
from exaug.io.store import read_faces
from exaug.model.default import DEFAULT_MODEL
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.augment import AugmentOptions, augment_dataset
from exaug.pipelines.like import check_intensity, load_reference
from exaug.pipelines.video import VideoOptions, edit_video
from videotools import Shot, all_frames, photo_clip

NEUTRAL = ("S100_001_00000001.png", "S108_002_00000001.png")  # two held-out people at rest, mouths shut
SURPRISE = "S082_001_00000015.png"  # another held-out person's surprise, inner lips about 13 px apart
HAPPY = "S076_006_00000019.png"


@pytest.fixture(scope="module")
def guided() -> ExpressionGenerator:
    return ExpressionGenerator.load(DEFAULT_MODEL, "cpu")


@pytest.fixture(scope="module")
def stargan(test_checkpoint) -> ExpressionGenerator:
    return ExpressionGenerator.load(test_checkpoint, "cpu")


@pytest.fixture(scope="module")
def neutral_faces(tmp_path_factory, ckplus_dir) -> Path:
    """A flat folder (identity = file stem) of two CK+ neutral faces."""
    folder = tmp_path_factory.mktemp("neutral")
    for name in NEUTRAL:
        (folder / name).symlink_to(ckplus_dir / "neutral" / name)
    return folder


@pytest.fixture(scope="module")
def faceless(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faceless") / "wall.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(path)
    return path


def _lip_gap(generator: ExpressionGenerator, faces: torch.Tensor) -> torch.Tensor:
    """Inner-lip opening in pixels of aligned uint8 (N, 3, S, S) faces."""
    meshes = generator.meshes(faces)
    return (meshes[:, LOWER_LIP_INNER] - meshes[:, UPPER_LIP_INNER]).norm(dim=-1)


@pytest.mark.parametrize("name", ["out.h5", "out"])
def test_augment_gives_every_face_the_references_expression_and_records_it(tmp_path, name, guided, neutral_faces,
                                                                           ckplus_dir):
    reference = ckplus_dir / "surprise" / SURPRISE
    output = tmp_path / name
    augment_dataset(neutral_faces, output, guided, file_hash(DEFAULT_MODEL), AugmentOptions(like=reference),
                    show_progress=False)
    with read_faces(output) as table:
        assert table.synthetic.tolist() == [False, True, False, True]
        assert table.expression.tolist() == [-1] * 4, "the reference's expression has no name"
        assert table.extra["reference"].tolist() == [-1, 0, -1, 0]
        (recorded,) = table.attrs["references"]
        assert recorded["path"] == str(reference.resolve()) and recorded["sha256"] == file_hash(reference)
        assert table.run_key["like"] == file_hash(reference) and table.run_key["expressions"] == []
        faces = torch.from_numpy(table.images[:]).permute(0, 3, 1, 2)
        paths = table.paths
    original, liked = _lip_gap(guided, faces[0::2]), _lip_gap(guided, faces[1::2])
    assert (original < 3).all() and (liked > original + 8).all(), (original, liked)
    if paths is not None:  # the folder form: files say what they are, the manifest which reference
        assert [Path(path).name for path in paths[1::2]] == [n.replace(".png", "_f0_like.png") for n in NEUTRAL]
        assert (output / "manifest.csv").read_text().splitlines()[0].endswith(",reference")


def test_a_resume_with_another_reference_is_refused(tmp_path, guided, neutral_faces, ckplus_dir):
    output, model_hash = tmp_path / "out.h5", file_hash(DEFAULT_MODEL)
    first = AugmentOptions(like=ckplus_dir / "surprise" / SURPRISE)
    augment_dataset(neutral_faces, output, guided, model_hash, first, show_progress=False)
    assert augment_dataset(neutral_faces, output, guided, model_hash, first, show_progress=False).resumed == 2
    with pytest.raises(ExaugError, match=r"different settings \(like\)"):
        augment_dataset(neutral_faces, output, guided, model_hash, AugmentOptions(like=ckplus_dir / "happy" / HAPPY),
                        show_progress=False)
    with pytest.raises(ExaugError, match=r"different settings \(expressions, like\)"):
        augment_dataset(neutral_faces, output, guided, model_hash, AugmentOptions(), show_progress=False)


def test_intensity_goes_to_1_5_on_the_guided_model_and_to_1_on_stargan(guided, stargan, ckplus_dir):
    reference = load_reference(ckplus_dir / "surprise" / SURPRISE, guided, DetectionOptions())
    rest = load_reference(ckplus_dir / "neutral" / NEUTRAL[0], guided, DetectionOptions()).face
    # The mesh points move half as far again...
    mesh, like = guided.meshes(rest), guided.meshes(reference.face)
    full, beyond = ((guided.targets(mesh, None, t, like=like) - mesh).norm(dim=-1).mean() for t in (1.0, 1.5))
    assert 1.45 < beyond / full < 1.55, (full, beyond)
    # ...and so does the face, as pixel change: past 1.0 the painted mouth is too rough for the mesh to
    # read its lips (it measures the gap smaller again), though the opening is visibly larger. (The
    # shading's gain is bounded, so the face changes less than 1.5x as much.)
    full, beyond = ((guided.generate(rest, like=reference.face, intensity=t).float() - rest.float()).abs().mean()
                    for t in (1.0, 1.5))
    assert beyond > 1.15 * full, (full, beyond)
    check_intensity(guided, 1.5)
    check_intensity(stargan, 1.0)
    with pytest.raises(ExaugError, match="--intensity 1.6: the geometry-guided model takes 0 to 1.5"):
        check_intensity(guided, 1.6)
    with pytest.raises(ExaugError, match="--intensity 1.2: a StarGAN model takes 0 to 1"):
        check_intensity(stargan, 1.2)


def _one_line(result, *expected: str) -> None:
    """The command failed with an ExaugError (what ``exaug`` prints as one line, exit 2) saying each of ``expected``."""
    assert isinstance(result.exception, ExaugError), result.output
    message = str(result.exception)
    assert "\n" not in message and all(text in message for text in expected), message


def test_cli_reference_problems_are_one_line_errors(tmp_path, neutral_faces, faceless, ckplus_dir, test_checkpoint):
    runner, reference = CliRunner(), str(ckplus_dir / "surprise" / SURPRISE)
    augment = ["augment", str(neutral_faces), "-o", str(tmp_path / "out.h5"), "-q", "--device", "cpu"]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    _one_line(runner.invoke(app, [*augment, "--like", str(faceless)]), str(faceless), "no face found")
    _one_line(runner.invoke(app, [*augment, "--like", str(empty)]), str(empty), "empty file")
    _one_line(runner.invoke(app, [*augment, "--like", str(tmp_path / "typo.jpg")]), "typo.jpg", "cannot be read")
    _one_line(runner.invoke(app, [*augment, "--like", reference, "--emotion", "happy"]), "without --emotion")
    _one_line(runner.invoke(app, [*augment, "--like", reference, "--model", str(test_checkpoint)]),
              reference, "only the geometry-guided model")
    _one_line(runner.invoke(app, [*augment, "--intensity", "1.2", "--model", str(test_checkpoint)]),
              "a StarGAN model takes 0 to 1")
    refused = runner.invoke(app, [*augment, "--like", reference, "--intensity", "1.6"])
    assert refused.exit_code == 2 and "less than or equal to 1.5" in refused.output
    video = ["video", str(tmp_path / "in.mp4"), "-o", str(tmp_path / "out.mp4")]
    _one_line(runner.invoke(app, video), "give one of --emotion and --like")
    _one_line(runner.invoke(app, [*video, "--emotion", "happy", "--like", reference]), "give one of --emotion and --like")
    assert not any(path.name.startswith("out") for path in tmp_path.iterdir()), "nothing written"


def test_cli_augment_takes_like_at_intensity_1_5(tmp_path, neutral_faces, ckplus_dir):
    reference = ckplus_dir / "surprise" / SURPRISE
    result = CliRunner().invoke(app, ["augment", str(neutral_faces), "-o", str(tmp_path / "out.h5"), "--like",
                                      str(reference), "--intensity", "1.5", "--preview", str(tmp_path / "sheet.png"),
                                      "-q", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with read_faces(tmp_path / "out.h5") as table:
        assert table.run_key["intensity"] == 1.5 and table.attrs["references"][0]["sha256"] == file_hash(reference)
    with Image.open(tmp_path / "sheet.png") as sheet:  # two faces x (original, like), under a label row
        assert sheet.size == (2 * 128, 16 + 2 * 128)


def _aligned(frames: np.ndarray, generator: ExpressionGenerator) -> torch.Tensor:
    """The largest face of each frame, aligned for ``generator``."""
    detector = DetectionOptions(faces="largest").detector("cpu", len(frames))
    aligner = FaceAligner(generator.template, generator.image_size, device="cpu")
    return aligner.align(list(frames), detector.detect(list(frames))).images


def test_video_like_moves_the_face_and_tags_the_reference(tmp_path, guided, ckplus_dir):
    """Six frames of a CK+ neutral face: each edited like the surprised reference, which the video's tags name."""
    clip = photo_clip(tmp_path / "neutral.mp4", [Shot(ckplus_dir / "neutral" / NEUTRAL[1], 6, (0.0, 0.0, 1.0))],
                      size=(160, 160))
    reference = ckplus_dir / "surprise" / SURPRISE
    summary = edit_video(clip, tmp_path / "out.mp4", guided, VideoOptions(like=reference, preset="ultrafast"),
                         show_progress=False)
    assert summary.faces_per_frame == [1] * 6
    assert summary.reference["sha256"] == file_hash(reference) and summary.reference["path"] == str(reference.resolve())
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert json.loads(container.metadata["exaug_like"]) == summary.reference
    before = _lip_gap(guided, _aligned(all_frames(clip)[0][[0, 5]], guided))
    after = _lip_gap(guided, _aligned(all_frames(tmp_path / "out.mp4")[0][[0, 5]], guided))
    assert (after > before + 6).all(), (before, after)
