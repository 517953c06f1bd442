"""Training commands: ``vtrkit train``, ``vtrkit eval`` and ``vtrkit demo``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vtrkit.config import ConfigError, load_config
from vtrkit.distributed import DistEnv


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
    """Train a model of any kind (CLIP4Clip, X-CLIP, CLIP2TV; VideoCLIP on stored features);
    launch with ``torchrun --nproc-per-node N`` for several processes. ``--resume`` continues
    from ``<output_dir>/last`` exactly, mid-epoch included."""
    from vtrkit.data.datasets import AnnotationError
    from vtrkit.train.pipeline import train_run

    try:
        cfg = load_config(config, set_)
        # A missing data root or annotation file is the user's to fix: one line, no traceback.
        result = train_run(cfg, resume=resume, device=device)
    except (ConfigError, AnnotationError) as exc:
        _fail(str(exc))
    except (ValueError, FileNotFoundError) as exc:
        if cfg.model.kind != "videoclip":  # VideoCLIP's feature problems are the user's to fix
            raise
        _fail(str(exc))
    if DistEnv.from_env().rank != 0:
        return
    typer.echo(f"{result.steps} steps in {result.seconds:.0f} s")
    if result.stopped_by_budget:
        typer.secho(
            f"note: train.time_budget_s stopped training at step {result.steps} of "
            f"{result.total_steps}; these numbers are not the recipe's",
            fg=typer.colors.YELLOW,
        )
    if result.last_eval is not None:
        typer.echo(_results_text(result.last_eval, f"{cfg.name}: final evaluation"))
    typer.echo(f"run folder: {result.run_dir}  (best checkpoint: {result.run_dir / 'best'})")


def _results_text(results: dict, title: str) -> str:
    """The retrieval table, or VideoCLIP's zero-shot metrics as JSON."""
    from vtrkit.eval.report import format_results_table

    if "raw" not in results:
        return json.dumps(results, indent=1)
    return format_results_table(results, title=title)


def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder or run folder."),
    config: Path = typer.Option(None, help="Evaluate with this config instead of the saved one."),
    set_: list[str] = typer.Option([], "--set", help="Override a key of the config."),
    split: str = typer.Option(None, help="Split to evaluate (default: the config's test split)."),
    output: Path = typer.Option(None, "--json", help="Write the results as JSON here."),
    device: str = typer.Option(None, help="cpu or cuda."),
) -> None:
    """Evaluate a checkpoint: R@1/5/10, MdR, MnR in both directions, raw and DSL (labelled);
    a VideoCLIP checkpoint: zero-shot retrieval, QA and step localisation."""
    from vtrkit.checkpoint import config_for_checkpoint
    from vtrkit.train.pipeline import evaluate_checkpoint

    try:
        cfg = config_for_checkpoint(checkpoint, config, set_)
        results = evaluate_checkpoint(checkpoint, split, cfg, device=device, output=output)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(_results_text(results, f"{checkpoint} on {results.get('split', split)}"))
    if output is not None:
        typer.echo(f"results written to {output}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run folder for the demo."),
    data: Path = typer.Option(Path("data/synthetic"), help="Where the synthetic set is written."),
    budget: float = typer.Option(
        None,
        help="Stop fine-tuning after this many seconds (default: none, the recipe's fixed "
        "number of steps; a cut-short run says so).",
    ),
    train_videos: int = typer.Option(
        None, help="Training videos in the generated synthetic set (default: the demo's size)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key of configs/demo.yaml."),
    query: str = typer.Option(
        None, help="Text to search for at the end (default: a test caption)."
    ),
) -> None:
    """The built-in pipeline on the CPU: generate the synthetic benchmark, pretrain the tiny CLIP
    on stills (cached in runs/pretrain_tiny), fine-tune X-CLIP, print the zero-shot and
    fine-tuned rows, and index and search test videos."""
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
