"""One look for every long-running loop: a rich progress bar with a rate and an ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)  # a path in a message stays on one line


class RateColumn(ProgressColumn):
    """Items per second with the unit the loop counts (images/s, frames/s, it/s)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def progress_bar(unit: str = "it", *, disable: bool = False) -> Progress:
    """A progress bar for ``unit``s; extra fields given to ``update(..., info=...)`` show at the end."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable,
        transient=False,
    )
