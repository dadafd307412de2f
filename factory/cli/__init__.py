"""The `factory` command line: parses arguments, calls the Python API, prints.

One module per noun (`data`: init, import, sql, export, log, jobs, why, plugins;
`snapshot`; `generate` and `teacher`; `filter`; `train`: train, eval, runs); packages
add commands through the `factory.commands` entry point (the reflect generator's
`alignment`, the external trainers' `train-config`). Every command takes --warehouse
(default $FACTORY_WAREHOUSE, else ./warehouse). Heavy modules are imported inside the
commands so `factory --help` is instant.

A `FactoryError` (or an operating-system error: a missing file, no permission) is printed
as one line and exits 1. Anything else is a bug: one line says so, and `--debug` shows its
traceback, scrubbed of secrets like every error text.
"""

from __future__ import annotations

import sys

import typer

from factory.cli import data, filter, generate, recipe, report, scaling, snapshot, train
from factory.cli.common import console, shown


def build() -> typer.Typer:
    from factory import plugins

    app = typer.Typer(
        help="instruction-factory: import, inspect, snapshot and export instruction-tuning data.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def options(
        debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error"),
    ) -> None:
        """instruction-factory: import, inspect, snapshot and export instruction-tuning data."""

    for module in (data, snapshot, generate, filter, train, recipe, report, scaling):
        module.register(app)
    for ep, register in plugins.commands():
        try:
            if isinstance(register, Exception):
                raise register
            register(app)
        except Exception as exc:  # a broken package's command is left out, with a word, not the whole CLI
            console(stderr=True).print(
                f"[yellow]warning:[/] command entry point {shown(ep.name)} = {shown(ep.value)} "
                f"(factory.commands) left out: {shown(exc)}"
            )
    return app


def _stop(message: str) -> None:
    from factory.errors import scrub

    console(stderr=True).print(f"[bold red]error:[/] {shown(scrub(message) or '')}")
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    import traceback

    from factory.errors import FactoryError, scrub

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args  # taken wherever it stands, before or after the command
    args = [a for a in args if a != "--debug"]
    try:
        build()(args, prog_name="factory")
    except FactoryError as exc:
        if debug:  # what led to it, a plugin's own traceback included
            sys.stderr.write(scrub(traceback.format_exc()) or "")
        _stop(str(exc))
    except OSError as exc:  # the environment, not the code: a missing file, a full disk, no permission
        _stop(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
    except Exception as exc:
        if debug:
            sys.stderr.write(scrub(traceback.format_exc()) or "")
            sys.exit(1)
        _stop(
            f"unexpected {type(exc).__name__}: {exc} (a bug in instruction-factory or a plugin; "
            "run again with --debug for the traceback)"
        )
