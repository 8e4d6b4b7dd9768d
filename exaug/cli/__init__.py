"""The ``exaug`` command: thin Typer commands over the library, one module per command.

Commands parse their options and call library functions (the same ones the tests call). Every
:class:`~exaug.errors.ExaugError` is printed as one line naming the file and the reason, exit code 2;
so is an error the system reports on a file (a full disk, a permission). Anything else is exaug's
own bug: one line saying so, exit code 3, and the traceback kept in a file for the report.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import typer

from exaug import __version__
from exaug.errors import ExaugError
from exaug.progress import console

app = typer.Typer(
    name="exaug",
    help="Expression augmentation for face datasets and videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's boxes left the options' help 24 of 80 columns
)


def _version(value: bool) -> None:
    if value:
        print(f"exaug {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """exaug: every face in eight expressions, identity kept."""


def _register() -> None:
    """Attach each command module's function to the app, in the order ``exaug --help`` lists them."""
    from exaug.cli.align import align_command
    from exaug.cli.augment import augment_command, merge_command
    from exaug.cli.eval import eval_command
    from exaug.cli.train import train_command
    from exaug.cli.video import video_command

    for name, command in (("align", align_command), ("train", train_command), ("augment", augment_command),
                          ("merge", merge_command), ("video", video_command), ("eval", eval_command)):
        summary = " ".join(command.__doc__.split("\n\n")[0].split())  # whole: click cuts its own at 45 characters
        app.command(name, short_help=summary)(command)


_register()


INTERRUPTED = 130  # Ctrl-C's exit status (128 + SIGINT); Typer turns a KeyboardInterrupt into it


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, not a traceback."""
    try:
        app()
    except SystemExit as stop:
        if stop.code == INTERRUPTED:
            _exit_at_once(INTERRUPTED)
        raise
    except ExaugError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)
    except OSError as err:  # the system's reason, on the file it names
        where = f"{err.filename}: " if err.filename else ""
        console.print(f"[bold red]error:[/] {where}{_one_line(err.strerror or err)}", highlight=False)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - a bug: said in one line, its traceback kept for the report
        if _out_of_memory(err):  # not a bug: the machine's limit, which smaller batches or faces stay under
            console.print(f"[bold red]error:[/] out of memory ({_one_line(err)[:300]}); a smaller --batch-size "
                          "(or --size) needs less", highlight=False)
            sys.exit(2)
        console.print(f"[bold red]error:[/] exaug failed unexpectedly ({type(err).__name__}: {_one_line(err)}); "
                      f"this is a bug, please report it with the traceback in {_keep_traceback()}", highlight=False)
        sys.exit(3)


def _exit_at_once(status: int) -> None:
    """Exit now, skipping the interpreter's teardown. By the time a Ctrl-C reaches here every ``with``
    block has closed (outputs committed or removed, locks released, threads joined), and the teardown
    only frees memory; yet about one interrupted augment in ten died in it, after its last message,
    with "terminate called without an active exception" (exit 134): a thread of torch's C++
    runtime still running as the process's destructors ran."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _keep_traceback() -> Path:
    """Write the exception being handled, with the command line, to a new file in the temporary folder."""
    with tempfile.NamedTemporaryFile("w", prefix=f"exaug-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt",
                                     delete=False) as file:
        file.write(f"exaug {__version__}: {' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    return Path(file.name)


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())


def _out_of_memory(err: Exception) -> bool:
    """Python's MemoryError, torch's CUDA OutOfMemoryError, or its CPU allocator's failure."""
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower() or "can't allocate memory" in str(err)
