"""The ``lungseg`` command line: one subcommand per stage, each a thin wrapper over the library.

Every subcommand lives in its own module here and registers itself on :data:`app`. User errors
(:class:`~lungseg.core.errors.LungsegError`) are printed as one red line with exit code 2, and so
is any ``OSError`` (a read-only or full disk, no permission, a path through a file): the user
can fix those, and a traceback would only hide the path and the reason.
"""

from __future__ import annotations

import sys

import typer

from lungseg.core.errors import LungsegError, quiet_third_party

app = typer.Typer(
    name="lungseg",
    help="Lung segmentation in chest X-rays: prepare, train, evaluate, compare, segment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: half the start-up time of rich's panels, and it reads the same in a log.
    rich_markup_mode=None,
)


def _register() -> None:
    # Imported for their side effect: each module adds its commands to ``app``.
    import importlib

    for name in (
        "prepare",
        "upload",
        "cache",
        "train",
        "models",
        "evaluate",
        "compare",
        "segment",
        "serve",
        "node",
    ):
        importlib.import_module(f"lungseg.cli.{name}")


def _print_version(value: bool) -> None:
    if value:
        from lungseg._version import __version__

        typer.echo(f"lungseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version."
    ),
) -> None:
    """Lung segmentation in chest X-rays: prepare, train, evaluate, compare, segment."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lungseg`` console script."""
    quiet_third_party()
    _register()
    try:
        app(args=argv, prog_name="lungseg")
    except LungsegError as exc:
        _fail(str(exc))
    except OSError as exc:
        from lungseg.core.errors import os_error_line

        _fail(os_error_line(exc))


def _fail(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    from lungseg.core.errors import printable

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]error:[/] {escape(printable(message, lines=True))}")
    sys.exit(2)
