"""VideoCLIP commands: ``vtrkit features``; ``videoclip-train`` / ``videoclip-eval`` are aliases of
``vtrkit train`` / ``vtrkit eval``, which handle ``model.kind: videoclip``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vtrkit.config import ConfigError, load_config


def register(app: typer.Typer) -> None:
    app.command("features")(features)
    app.command("videoclip-train")(videoclip_train)
    app.command("videoclip-eval")(videoclip_eval)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def features(
    videos: Path = typer.Argument(..., help="Folder of video files (searched recursively)."),
    out: Path = typer.Argument(..., help="Output folder: index.json + one <video_id>.npy each."),
    extractor: str = typer.Option("clip", help="Feature extractor; 'clip' (the image tower)."),
    config: Path = typer.Option(
        None, help="YAML config whose model.backbone describes the CLIP towers."
    ),
    backbone: Path = typer.Option(None, help="CLIP checkpoint (overrides the config's)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key."),
    image_size: int = typer.Option(None, help="Frame size (default: the backbone's)."),
    batch_size: int = typer.Option(64, help="Frames per forward pass."),
    device: str = typer.Option("cpu", help="cpu or cuda (under torchrun: cuda:<local rank>)."),
    retry_failed: bool = typer.Option(False, help="Try again the videos recorded as failed."),
    merge_only: bool = typer.Option(False, help="Only fold shard logs into index.json."),
) -> None:
    """One float16 vector per second per video (resumable; shard with ``torchrun``)."""
    from vtrkit.data.datasets import VIDEO_EXTENSIONS
    from vtrkit.videoclip.features import (
        ClipSecondExtractor,
        extract_features,
        index_summary,
        merge_shard_indexes,
        shard_from_env,
        videos_in_folder,
    )

    if merge_only:
        typer.echo(json.dumps(index_summary(merge_shard_indexes(out))))
        return
    if extractor != "clip":
        _fail(
            f"--extractor {extractor!r} is not built in; write the documented array format "
            "(see vtrkit/videoclip/features.py) with your own extractor instead"
        )
    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    backbone_cfg = cfg.model.backbone
    if backbone is not None:
        backbone_cfg = backbone_cfg.model_copy(update={"checkpoint": backbone})
    rank, world = shard_from_env()
    if world > 1:
        from vtrkit.distributed import setup

        info = setup(device)
        device = str(info.device)
    from vtrkit.backbones import build_clip

    try:
        towers, _ = build_clip(backbone_cfg)
        found = videos_in_folder(videos, VIDEO_EXTENSIONS)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    ex = ClipSecondExtractor(towers, image_size, batch_size, device=device)
    summary = extract_features(
        found, out, ex, rank=rank, world_size=world, retry_failed=retry_failed
    )
    typer.echo(f"rank {rank}/{world}: {summary}")
    if rank == 0:
        from vtrkit.videoclip.features import read_index

        typer.echo(json.dumps(index_summary(read_index(out))))
    if world > 1:
        from vtrkit.distributed import cleanup

        cleanup()


def videoclip_train(
    config: Path = typer.Argument(..., help="YAML config with model.kind: videoclip."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=3"),
    resume: bool = typer.Option(
        False, help="Continue from <output_dir>/last if it exists, mid-epoch included."
    ),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Alias of ``vtrkit train`` for a VideoCLIP config (kept for older scripts)."""
    from vtrkit.cli.train import train

    train(config, set_, resume, device)


def videoclip_eval(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder or run folder."),
    split: str = typer.Option(None, help="Split to evaluate (default: the config's test split)."),
    config: Path = typer.Option(None, help="Evaluate with this config instead of the saved one."),
    set_: list[str] = typer.Option([], "--set", help="Override a key of the config."),
    output: Path = typer.Option(None, "--json", help="Write the results as JSON here."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Alias of ``vtrkit eval`` for a VideoCLIP checkpoint (kept for older scripts)."""
    from vtrkit.cli.train import evaluate

    evaluate(checkpoint, config, set_, split, output, device)
