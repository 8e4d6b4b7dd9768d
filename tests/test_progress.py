"""The progress bar's figures stay whole in a narrow terminal."""

from __future__ import annotations

import pytest
from rich.console import Console

from exaug.progress import progress_bar


@pytest.mark.parametrize("width", [80, 60])
def test_counts_rate_times_and_info_are_never_cut_in_a_narrow_terminal(width):
    """Also: with a single update (one batch) the rate is the mean since the start, not rich's "-"."""
    bar = progress_bar("images")
    task = bar.add_task("training the expression classifier", total=5000, info="1234 faces")
    bar.update(task, advance=1234)
    bar.tasks[0].start_time -= 100  # as if started 100 s ago
    terminal = Console(width=width, color_system=None, force_terminal=False, record=True)
    terminal.print(bar.get_renderable())
    lines = terminal.export_text().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= width, lines  # one line, nothing wrapped
    for figure in ("1234/5000", "12.3 images/s", "0:01:40", "1234 faces"):
        assert figure in lines[0], lines
    assert "…" in lines[0] and ("━" in lines[0] or "╸" in lines[0])  # the description gave way, the bar is there
