"""``vtrkit pretrain``: image–text pretraining of the tiny CLIP on synthetic stills (SPEC §6)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from vtrkit.config import ConfigError, load_config


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)


def pretrain(
    config: Path = typer.Argument(
        Path("configs/pretrain_tiny.yaml"), help="YAML config with a pretrain section."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=3"),
    resume: bool = typer.Option(False, help="Continue from <output_dir>/last if it exists."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Pretrain CLIP towers on synthetic stills and export them as a backbone checkpoint.

    Writes <output_dir>/clip.pt (OpenAI layout), the tokenizer and backbone.yaml (the
    model.backbone section every recipe loads them with), and reports zero-shot image-text
    retrieval on held-out compositions, linear probes against chance and the zero-shot video row.
    """
    from vtrkit.eval.pretrain_checks import format_checks
    from vtrkit.eval.report import format_results_table
    from vtrkit.train.pretrain_pipeline import BACKBONE_FILE, pretrain_run

    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    result = pretrain_run(cfg, resume=resume, device=device)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    typer.echo(format_checks(result.checks))
    video = result.checks.get("zero_shot_video")
    if video and "skipped" not in video:
        typer.echo(format_results_table(video, title="zero-shot CLIP (meanP, no video training)"))
    if result.stopped_by_budget:
        typer.secho(
            f"stopped by train.time_budget_s after {result.steps} of {result.total_steps} steps: "
            "these are not the full schedule's numbers",
            fg=typer.colors.YELLOW,
        )
    settings = json.dumps(result.backbone.model_dump(mode="json", exclude_defaults=True))
    typer.echo(
        f"{result.steps} steps in {result.seconds:.0f} s; backbone in {result.run_dir}: "
        f"fine-tune from it with the model.backbone section of "
        f"{result.run_dir / BACKBONE_FILE} ({settings})"
    )
