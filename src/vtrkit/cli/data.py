"""Data commands: ``vtrkit synth``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


def synth(
    out: Path = typer.Argument(..., help="Output folder for the synthetic benchmark."),
    train: int = typer.Option(2000, help="Number of training videos."),
    test: int = typer.Option(1000, help="Number of test videos (the 1k-A-like split)."),
    long: int = typer.Option(200, help="Number of long narrated videos (YouCook2 layout)."),
    vague: float = typer.Option(0.0, help="Share of training captions made vague (0-1)."),
    seed: int = typer.Option(0, help="Random seed; the output is deterministic for a seed."),
) -> None:
    """Generate the built-in synthetic benchmark (real video files + MSR-VTT-layout annotations)."""
    from vtrkit.data.synthetic import generate

    summary = generate(out, n_train=train, n_test=test, n_long=long, vague_share=vague, seed=seed)
    typer.echo(summary)
