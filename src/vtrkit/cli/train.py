"""Training commands: ``vtrkit train``, ``vtrkit eval`` and ``vtrkit demo``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from vtrkit.config import ConfigError, load_config


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("demo")(demo)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=3"),
    resume: bool = typer.Option(False, help="Continue from <output_dir>/last if it exists."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Train a model; launch with ``torchrun --nproc-per-node N`` for several processes."""
    from vtrkit.data.datasets import AnnotationError
    from vtrkit.eval.report import format_results_table
    from vtrkit.train.pipeline import train_run

    try:
        cfg = load_config(config, set_)
        # A missing data root or annotation file is the user's to fix: one line, no traceback.
        result = train_run(cfg, resume=resume, device=device)
    except (ConfigError, AnnotationError) as exc:
        _fail(str(exc))
    if result.last_eval is not None and int(os.environ.get("RANK", "0")) == 0:
        typer.echo(format_results_table(result.last_eval, title=f"{cfg.name}: final evaluation"))
        typer.echo(f"run folder: {result.run_dir}  (best checkpoint: {result.run_dir / 'best'})")


def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder or run folder."),
    config: Path = typer.Option(None, help="Evaluate with this config instead of the saved one."),
    set_: list[str] = typer.Option([], "--set", help="Override a key of the config."),
    split: str = typer.Option(None, help="Split to evaluate (default: the config's test split)."),
    output: Path = typer.Option(None, "--json", help="Write the results as JSON here."),
    device: str = typer.Option(None, help="cpu or cuda."),
) -> None:
    """Evaluate a checkpoint: R@1/5/10, MdR, MnR in both directions, raw and DSL (labelled)."""
    from vtrkit.checkpoint import config_for_checkpoint
    from vtrkit.eval.report import format_results_table
    from vtrkit.train.pipeline import evaluate_checkpoint

    try:
        cfg = config_for_checkpoint(checkpoint, config, set_)
        results = evaluate_checkpoint(checkpoint, split, cfg, device=device, output=output)
    except (ConfigError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(format_results_table(results, title=f"{checkpoint} on {results['split']}"))
    if output is not None:
        typer.echo(f"results written to {output}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run folder for the demo."),
    data: Path = typer.Option(Path("data/synthetic"), help="Where the synthetic set is written."),
    budget: float = typer.Option(
        None, help="Training time budget in seconds (default: configs/demo.yaml's)."
    ),
    train_videos: int = typer.Option(
        None, help="Training videos in the generated synthetic set (default: the demo's size)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key of configs/demo.yaml."),
    query: str = typer.Option(
        None, help="Text to search for at the end (default: a test caption)."
    ),
) -> None:
    """Generate the synthetic benchmark, train X-CLIP on the CPU, evaluate it and search it."""
    from vtrkit.demo import run_demo

    summary = run_demo(
        out=out,
        data=data,
        budget_s=budget,
        overrides=set_,
        query=query,
        train_videos=train_videos,
    )
    typer.echo(json.dumps(summary["headline"], indent=2))
