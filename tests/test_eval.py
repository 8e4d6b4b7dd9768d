"""``exaug eval`` on real CK+ faces with the tiny test generator.

The classifier trains for 30 steps on 300 faces: enough to beat chance on held-out subjects, not
to be a good judge. What is checked is the protocol (subject-disjoint split, every expression
scored, counts and accuracies agreeing, change metrics meaning what they say, files), not how good
the tiny generator is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from exaug.cli.eval import eval_command, report_table
from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.faces.blend import feather_mask
from exaug.model import ExpressionGenerator
from exaug.model.judge import load_classifier, predict_expressions, save_classifier
from exaug.pipelines.evaluate import OUTSIDE_THRESHOLD, EvalOptions, EvalReport, evaluate
from exaug.train.judge import train_classifier
from exaug.progress import console
from exaug.train.faceset import load_faces

QUICK = dict(align=False, device="cpu", seed=0, show_progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads on two cores shared with other work run ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class IdentityGenerator:
    """Returns every face unchanged: what a generator that edits nothing would score."""

    def __init__(self, like: ExpressionGenerator, **meta):
        self.meta = {**like.meta, **meta}
        self.image_size, self.template = self.meta["image_size"], self.meta["template"]
        self.expressions = tuple(self.meta["expressions"])
        self.device = torch.device("cpu")

    def generate_all(self, faces: torch.Tensor, expressions) -> torch.Tensor:
        return faces[:, None].expand(-1, len(expressions), -1, -1, -1).clone()

    def generate(self, faces: torch.Tensor, expressions) -> torch.Tensor:
        return faces.clone()


@pytest.fixture(scope="module")
def generator(test_checkpoint) -> ExpressionGenerator:
    return ExpressionGenerator.load(test_checkpoint, "cpu")


@pytest.fixture(scope="module")
def evaluated(generator, ckplus_dir, tmp_path_factory) -> tuple[EvalReport, Path]:
    """One real evaluation (classifier trained here and saved), shared by the tests that read it.
    Six held-out subjects, pinned rather than the generator's two: a sturdier accuracy."""
    saved = tmp_path_factory.mktemp("eval") / "classifier.pt"
    options = EvalOptions(val_subjects="6", epochs=3, max_faces=300, save_classifier=saved, **QUICK)
    return evaluate(generator, ckplus_dir, options), saved


@pytest.fixture(scope="module")
def ck_faces(ckplus_dir):
    return load_faces(ckplus_dir, image_size=64, crops=True)


def test_report_covers_every_expression_with_consistent_counts(evaluated):
    report, _ = evaluated
    held = sum(report.real_count.values())
    assert held > 0
    for mapping in (report.real_count, report.real_accuracy, report.generated_count, report.generated_accuracy):
        assert list(mapping) == list(EXPRESSIONS)
    assert all(count == held for count in report.generated_count.values())
    hits = 0.0
    for name in EXPRESSIONS:
        accuracy, count = report.real_accuracy[name], report.real_count[name]
        assert (accuracy is None) == (count == 0)
        if accuracy is not None:
            assert 0 <= accuracy <= 1 and accuracy * count == pytest.approx(round(accuracy * count))
            hits += accuracy * count
        generated = report.generated_accuracy[name]
        assert 0 <= generated <= 1 and generated * held == pytest.approx(round(generated * held))
    assert report.real_overall == pytest.approx(hits / held)
    assert report.generated_overall == pytest.approx(np.mean(list(report.generated_accuracy.values())))
    assert report.classifier.startswith("trained here for 3 epochs on 300 faces")
    assert report.seconds["total"] >= report.seconds["classifier"] > 0


def test_classifier_beats_chance_on_held_out_subjects(evaluated):
    """Deterministic for the seed; chance is 1 in 8 whether counted per face or per expression."""
    report, _ = evaluated
    assert report.real_overall > 1 / len(EXPRESSIONS)
    assert report.real_mean_per_expression > 1 / len(EXPRESSIONS)


def test_held_out_subjects_are_unseen_by_the_classifier(evaluated, ck_faces):
    report, saved = evaluated
    assert report.held_out_subjects and report.training_subjects
    assert not set(report.held_out_subjects) & set(report.training_subjects)
    assert not set(report.held_out_subjects) & set(load_classifier(saved, "cpu")[1]["training_subjects"])
    held_faces = np.isin(ck_faces.subjects, report.held_out_subjects).sum()
    assert sum(report.real_count.values()) == held_faces  # whole subjects: every face of each


class BlackGenerator(IdentityGenerator):
    """Renders every face black, in every expression and back: its change is the faces themselves."""

    def generate_all(self, faces: torch.Tensor, expressions) -> torch.Tensor:
        return torch.zeros_like(faces)[:, None].expand(-1, len(expressions), -1, -1, -1).clone()

    def generate(self, faces: torch.Tensor, expressions) -> torch.Tensor:
        return torch.zeros_like(faces)


def test_change_metrics_are_grey_levels_outside_the_face_and_after_the_cycle(generator, evaluated, ckplus_dir,
                                                                             ck_faces):
    """A generator that blackens everything changes each pixel by its own grey level: the outside
    change is the mean grey level where feather_mask is 0 (background, hair), the cycle error the
    mean grey level of the whole face. The real generator's figures lie in that same 0-255 scale."""
    report, saved = evaluated
    assert 0 < report.outside_change < 255 and 0 < report.cycle_error < 255
    black = BlackGenerator(generator)
    blackened = evaluate(black, ckplus_dir, EvalOptions(classifier=saved, **QUICK,
                                                        val_subjects=",".join(report.held_out_subjects)))
    held = ck_faces.faces_at(np.flatnonzero(np.isin(ck_faces.subjects, report.held_out_subjects)), 64).float()
    outside = feather_mask(64, torch.device("cpu"))[0] < OUTSIDE_THRESHOLD
    assert 0 < outside.float().mean() < 0.5  # a border, not the face
    assert blackened.outside_change == pytest.approx(float(held[..., outside].mean()), rel=1e-4)
    assert blackened.cycle_error == pytest.approx(float(held.mean()), rel=1e-4)


def test_identity_generator_changes_nothing(generator, evaluated, ckplus_dir):
    """Its held-out subjects come from its metadata; each face is classified once per target, so
    the generated accuracies of a generator that changes nothing add up to one."""
    report, saved = evaluated
    identity = IdentityGenerator(generator, data={"validation": {"held_out_subjects": report.held_out_subjects}})
    unchanged = evaluate(identity, ckplus_dir, EvalOptions(classifier=saved, **QUICK))
    assert unchanged.outside_change == 0 and unchanged.cycle_error == 0
    assert unchanged.held_out_subjects == report.held_out_subjects
    assert unchanged.split.startswith("the generator's held-out subjects")
    assert unchanged.real_count == report.real_count and unchanged.real_accuracy == report.real_accuracy
    assert sum(unchanged.generated_accuracy.values()) == pytest.approx(1)
    assert unchanged.classifier.startswith(f"loaded from {saved}")


def test_sheet_shows_each_held_out_face_in_every_expression_under_the_verdict(generator, evaluated, ckplus_dir,
                                                                             tmp_path):
    """With a generator that changes nothing, every cell of a row is the real face, and the judge
    sees one expression in it: its caption is green in that one column (asked for it) and red in the
    others; the real column's caption is green when that expression is the real one."""
    report, saved = evaluated
    identity = IdentityGenerator(generator, data={"validation": {"held_out_subjects": report.held_out_subjects}})
    sheet = tmp_path / "sheet.png"
    evaluate(identity, ckplus_dir, EvalOptions(classifier=saved, sheet=sheet, sheet_faces=3, batch_size=2, **QUICK))
    picture = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    size, band = generator.image_size, 16
    assert picture.shape == (band + 3 * (size + band), 9 * size, 3)

    def caption_colour(row: int, column: int) -> str:
        top = band + row * (size + band) + size
        pixels = picture[top:top + band, column * size:(column + 1) * size].reshape(-1, 3)
        green = ((pixels[:, 1] > 90) & (pixels[:, 0] < 60)).any()
        red = ((pixels[:, 0] > 140) & (pixels[:, 1] < 60)).any()
        assert green != red
        return "green" if green else "red"

    for row in range(3):
        top = band + row * (size + band)
        cells = [picture[top:top + size, column * size:(column + 1) * size] for column in range(9)]
        assert all((cell == cells[0]).all() for cell in cells)  # nothing changed
        assert [caption_colour(row, column) for column in range(1, 9)].count("green") == 1


def test_several_saved_classifiers_vote_as_a_panel(generator, evaluated, ckplus_dir, test_checkpoint, tmp_path):
    """--classifier repeated: the judges vote with their mean probability (the same judge twice votes
    exactly as it does alone), the report says so, and a panel cannot be saved as one classifier."""
    report, saved = evaluated
    identity = IdentityGenerator(generator, data={"validation": {"held_out_subjects": report.held_out_subjects}})
    alone = evaluate(identity, ckplus_dir, EvalOptions(classifier=saved, **QUICK))
    twice = evaluate(identity, ckplus_dir, EvalOptions(classifier=[saved, saved], **QUICK))
    assert twice.real_accuracy == alone.real_accuracy and twice.generated_accuracy == alone.generated_accuracy
    assert twice.classifier.startswith("a panel of 2 voting with their mean probability")
    with pytest.raises(ExaugError, match="saves one classifier, not a panel of 2"):
        evaluate(identity, ckplus_dir, EvalOptions(classifier=[saved, saved], save_classifier=tmp_path / "p.pt", **QUICK))
    app = typer.Typer()
    app.command()(eval_command)
    result = CliRunner().invoke(app, [str(ckplus_dir), "--model", str(test_checkpoint), "--classifier", str(saved),
                                      "--classifier", str(saved), "--val-subjects", "2", "--no-align",
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "a panel of 2" in " ".join(result.output.split())


def test_report_json_round_trip_and_table(evaluated, tmp_path):
    report, _ = evaluated
    assert EvalReport.from_json(report.to_json()) == report
    with console.capture() as captured:
        console.print(report_table(report))
    text = captured.get()
    assert all(name in text for name in EXPRESSIONS) and "cycle error" in text and "outside the face" in text


def test_cli_writes_table_and_json(test_checkpoint, evaluated, ckplus_dir, tmp_path):
    """A subset of the fixture's held-out subjects (the same seeded draw), so the saved classifier,
    which never saw them, may judge them."""
    report, saved = evaluated
    app = typer.Typer()
    app.command()(eval_command)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, [str(ckplus_dir), "--model", str(test_checkpoint), "--classifier", str(saved),
                                      "--val-subjects", "2", "--no-align", "--device", "cpu", "--json", str(out),
                                      "--sheet", str(tmp_path / "sheet.png"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "sheet.png").size == (9 * 64, 16 + 8 * (64 + 16))
    assert f"sheet: {tmp_path / 'sheet.png'}" in " ".join(result.output.split())
    written = EvalReport.from_json(out.read_text())
    assert len(written.held_out_subjects) == 2 and set(written.held_out_subjects) <= set(report.held_out_subjects)
    assert "generated acc" in result.output
    assert "reading faces" not in result.output and "rendering" not in result.output  # --quiet: no progress bars


def test_saved_classifier_predicts_identically(ck_faces, tmp_path):
    faces = ck_faces.subset(np.arange(0, len(ck_faces), 30))
    network = train_classifier(faces, image_size=64, epochs=1, device="cpu")
    path = save_classifier(tmp_path / "classifier.pt", network, {"image_size": 64})
    loaded, meta = load_classifier(path, "cpu")
    images = torch.from_numpy(faces.gather(np.arange(len(faces)))).permute(0, 3, 1, 2)
    assert meta == {"image_size": 64}
    assert torch.equal(predict_expressions(network, images), predict_expressions(loaded, images))


def test_bad_classifier_files_are_clear_errors(test_checkpoint, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    for path in (garbage, pickled, Path(test_checkpoint), tmp_path / "missing.pt"):
        with pytest.raises(ExaugError, match=str(path.name)):
            load_classifier(path, "cpu")


def test_loaded_classifier_must_fit_the_evaluation(generator, evaluated, ckplus_dir, tmp_path):
    """A classifier for another face size, or one that trained on the held-out people, is refused."""
    report, saved = evaluated
    network, meta = load_classifier(saved, "cpu")
    for name, changed in (("other_size", {"image_size": 128}),
                          ("saw_held_out", {"training_subjects": report.held_out_subjects[:1]})):
        path = save_classifier(tmp_path / f"{name}.pt", network, {**meta, **changed})
        options = EvalOptions(classifier=path, val_subjects=",".join(report.held_out_subjects), **QUICK)
        with pytest.raises(ExaugError, match="128px|held-out subjects"):
            evaluate(generator, ckplus_dir, options)


def test_template_mismatch_is_an_error(generator, ckplus_dir):
    aligned = IdentityGenerator(generator, template="exaug")
    with pytest.raises(ExaugError, match="unaligned crops"):
        evaluate(aligned, ckplus_dir, EvalOptions(**QUICK))
