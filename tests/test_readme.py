"""The README's promises that a test can check: CI runs its test command, its quick start is a valid
command on files that are in the repository."""

from __future__ import annotations

import re
import shlex

import typer

from conftest import REPO
from exaug.cli import app
from exaug.io.sources import discover_sources


def _readme_commands() -> list[str]:
    return re.findall(r"^\s*(pip install [^\n]+)$", (REPO / "README.md").read_text(), flags=re.M)


def test_ci_runs_the_readme_test_command():
    test_commands = [line for line in _readme_commands() if "pytest" in line]
    assert len(test_commands) == 1, test_commands
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_commands[0].strip() in ci_lines


def test_quick_start_is_a_valid_command_on_the_bundled_examples():
    """The quick start installs, then runs one exaug command: its options are the CLI's own, its input
    is a folder of the repository holding the example portraits, and it writes where git ignores."""
    quick_start = [line for line in _readme_commands() if "exaug " in line]
    assert len(quick_start) == 1, quick_start
    install, run = quick_start[0].split(" && ")
    assert install == "pip install -c constraints.txt -e ."
    words = shlex.split(run)
    assert words[:2] == ["exaug", "augment"]
    context = typer.main.get_command(app).get_command(None, "augment").make_context("augment", words[2:])
    params = context.params
    assert params["all_emotions"] and params["model"] is None  # every expression, the bundled model
    found = {source.relpath for source in discover_sources(REPO / params["input_path"])}
    assert found == {"astronaut.png", "grace_hopper.jpg"}
    gitignored = (REPO / ".gitignore").read_text().splitlines()
    for written in (params["output"], params["preview"]):
        assert not written.is_absolute() and f"/{written.parts[0]}/" in gitignored
