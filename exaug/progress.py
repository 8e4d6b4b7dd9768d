"""One look for every long-running loop: a rich progress bar with a rate and an ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)  # a path in a message stays on one line


class RateColumn(ProgressColumn):
    """Items per second with the unit the loop counts (images/s, frames/s, it/s)."""

    def __init__(self, unit: str):
        super().__init__(table_column=Column(no_wrap=True))
        self.unit = unit

    def render(self, task: Task) -> Text:
        # rich's own estimate needs two updates within its window; a run of one or two batches has
        # none, and its finished bar said "- images/s": then the mean rate since the start
        speed = task.finished_speed or task.speed or (task.completed / task.elapsed if task.elapsed else None)
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def progress_bar(unit: str = "it", *, disable: bool = False) -> Progress:
    """A progress bar for ``unit``s; extra fields given to ``update(..., info=...)`` show at the end.

    The figures never wrap: in a narrow terminal (80 columns) the description is shortened and the
    bar narrowed instead; left to rich's defaults, the counts, rate and times were cut to "1234/…"."""
    def figures() -> Column:
        return Column(no_wrap=True)

    return Progress(
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1,
                                                                   min_width=8)),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=6)),
        MofNCompleteColumn(table_column=figures()),
        RateColumn(unit),
        TimeElapsedColumn(table_column=figures()),
        TimeRemainingColumn(table_column=figures()),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
        console=console,
        disable=disable,
        transient=False,
        expand=True,
    )
