"""The ``exaug`` console script, which imports the CLI only once Ctrl-C can be answered.

Importing the commands imports torch, which takes a couple of seconds; a Ctrl-C in them used to
print a page of import traceback. Here it exits quietly with 130, as a Ctrl-C later does.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from exaug.cli import main as run_cli
    except KeyboardInterrupt:
        sys.exit(130)
    run_cli()
