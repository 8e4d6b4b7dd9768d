"""The README's promises that a test can check: CI runs its test command, its examples exist."""

from __future__ import annotations

import re

from conftest import REPO


def _readme_commands() -> list[str]:
    return re.findall(r"^\s*(pip install [^\n]+)$", (REPO / "README.md").read_text(), flags=re.M)


def test_ci_runs_the_readme_test_command():
    test_commands = [line for line in _readme_commands() if "pytest" in line]
    assert len(test_commands) == 1, test_commands
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_commands[0].strip() in ci_lines


def test_quick_start_examples_exist():
    assert (REPO / "examples" / "grace_hopper.jpg").is_file() and (REPO / "examples" / "astronaut.png").is_file()
    assert any("examples" in line for line in _readme_commands())
