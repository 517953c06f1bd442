"""The ``vtrkit`` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    help="Text-video retrieval: train, evaluate, index and search videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register_all() -> None:
    # Explicit imports: each module adds its commands to `app`.
    from vtrkit.cli import convert, data, index, pretrain, train, videoclip

    for module in (data, train, pretrain, index, videoclip, convert):
        module.register(app)


def main() -> None:
    _register_all()
    app()
