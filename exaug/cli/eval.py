"""``exaug eval DATA``: classifier accuracy on real and generated held-out faces, and what G changes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from exaug.cli.common import DEVICE, QUIET, DeviceChoice, library_defaults
from exaug.io.atomic import atomic_write, check_writable
from exaug.model.default import model_path
from exaug.model.generator import ExpressionGenerator
from exaug.expressions import EXPRESSIONS
from exaug.pipelines.evaluate import EvalOptions, EvalReport, evaluate
from exaug.progress import console


DEFAULT = library_defaults(EvalOptions)


def eval_command(
    data: Path = typer.Argument(
        ..., metavar="DATA",
        help="Labelled faces, as exaug train takes them: aligned faces from `exaug align`, or a folder with one "
             "sub-folder per expression."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", show_default=False,
                                         help="Generator file or training run folder (default: the bundled model)."),
    classifier: Optional[List[Path]] = typer.Option(
        None, "--classifier", show_default=False,
        help="Use this saved classifier instead of training one; repeat it for a panel that votes with its mean "
             "probability (FER judges trained with other seeds)."),
    save_classifier: Optional[Path] = typer.Option(None, "--save-classifier", show_default=False,
                                                   help="Save the classifier, to score other models alike."),
    epochs: int = typer.Option(DEFAULT["epochs"], help="Epochs of classifier training."),
    val_subjects: Optional[str] = typer.Option(
        None, show_default=False,
        help="Held-out subjects: a number or a comma list of ids (default: the ones the generator held out)."),
    seed: int = typer.Option(DEFAULT["seed"], help="Seed for the split and the classifier."),
    align: bool = typer.Option(DEFAULT["align"], "--align/--no-align",
                               help="--no-align: the expression folders hold cropped faces; read them as they are."),
    cache_dir: Optional[Path] = typer.Option(
        None, envvar="EXAUG_CACHE", show_default=False,
        help="Cache folder; aligned raw folders go to its aligned/ (default: ~/.cache/exaug)."),
    json_output: Optional[Path] = typer.Option(None, "--json", metavar="OUT.json", show_default=False,
                                               help="Also write the report as JSON."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", metavar="SHEET.png", show_default=False,
                                         help="Also draw the first 8 held-out faces, real and in each expression, "
                                              "each under what the classifier saw (green: as asked)."),
    device: DeviceChoice = DEVICE,
    batch_size: int = typer.Option(DEFAULT["batch_size"], min=1, help="Faces per classifier step and per generation batch."),
    quiet: bool = QUIET,
) -> None:
    """Score a generator: an expression classifier's accuracy on real and generated held-out faces."""
    options = EvalOptions(val_subjects=val_subjects, seed=seed, epochs=epochs, batch_size=batch_size,
                          device=device.value, classifier=classifier or None, save_classifier=save_classifier,
                          align=align, cache_dir=None if cache_dir is None else str(cache_dir), sheet=sheet,
                          show_progress=not quiet)
    if json_output is not None:
        check_writable(json_output)
    generator = ExpressionGenerator.load(model_path(model), device.value)
    report = evaluate(generator, data, options)
    console.print(report_table(report))
    if json_output is not None:
        atomic_write(json_output, lambda handle: handle.write(report.to_json().encode() + b"\n"))
        console.print(f"report: {json_output}", highlight=False)
    if sheet is not None:
        console.print(f"sheet: {sheet}", highlight=False)


def report_table(report: EvalReport) -> Table:
    """Per expression: held-out real faces, the classifier's accuracy on them, and on the
    generated faces asked to show that expression; the change metrics below."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    table = Table(title=f"exaug eval: {report.data} ({len(report.held_out_subjects)} held-out subjects)",
                  title_justify="left", caption_justify="left")
    table.add_column("expression")
    table.add_column("n real", justify="right")
    table.add_column("real acc", justify="right")
    table.add_column("generated acc", justify="right")
    for name in EXPRESSIONS:
        table.add_row(name, str(report.real_count[name]), percent(report.real_accuracy[name]),
                      percent(report.generated_accuracy[name]))
    table.add_section()
    table.add_row("overall", str(sum(report.real_count.values())), percent(report.real_overall),
                  percent(report.generated_overall))
    table.add_row("mean per expression", "", percent(report.real_mean_per_expression),
                  percent(report.generated_overall))
    table.caption = "\n".join([
        f"mean change outside the face: {report.outside_change:.2f} grey levels",
        f"cycle error (x -> target -> source): {report.cycle_error:.2f} grey levels",
        f"held out: {report.split}",
        f"classifier: {report.classifier}",
        f"time: {report.seconds.get('total', 0):.1f} s",
    ])
    return table
