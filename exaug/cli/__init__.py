"""The ``exaug`` command: thin Typer commands over the library, one module per command.

Commands parse their options and call library functions (the same ones the tests call). Every
:class:`~exaug.errors.ExaugError` is printed as one line naming the file and the reason, exit code 2;
Ctrl-C exits with 130 after the library has saved what it had.
"""

from __future__ import annotations

import sys

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
    """Commands appear here only once they are complete (a half-built command is not in --help)."""
    from exaug.cli.align import align_command

    app.command("align")(align_command)


_register()


def main() -> None:
    """Entry point: user errors become one red line, not a traceback."""
    try:
        app(standalone_mode=False)
    except ExaugError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as err:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
