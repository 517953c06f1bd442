"""``vtrkit convert``: an official X-CLIP / CLIP4Clip checkpoint as a vtrkit checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def convert(
    source: Path = typer.Argument(
        ...,
        help="Official checkpoint: a pytorch_model.bin.<epoch> file, or the official output "
        "folder holding them (the best epoch its log.txt names, else the last).",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="vtrkit checkpoint folder to write."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a key of the inferred config, e.g. --set data.dataset=msrvtt "
        "--set data.root=data/msrvtt (the weights cannot tell the data settings).",
    ),
    force: bool = typer.Option(False, help="Overwrite a checkpoint already in the folder."),
) -> None:
    """Write model.safetensors + config.yaml from an official X-CLIP/CLIP4Clip checkpoint.

    The model kind, temporal depth and X-CLIP frame/word slots are read off the weights (and
    logged); the result loads wherever a vtrkit checkpoint does, with the same logits.
    """
    from safetensors.torch import save_file

    from vtrkit.checkpoint import (
        CONFIG_FILE,
        MODEL_FILE,
        config_for_checkpoint,
        load_trained,
        model_state_dict,
    )
    from vtrkit.config import ConfigError, save_config

    if (output / MODEL_FILE).exists() and not force:
        _fail(f"{output / MODEL_FILE} exists; pass --force to overwrite it or pick another -o")
    try:
        cfg = config_for_checkpoint(source, None, set_)
        trained = load_trained(source, cfg=cfg)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    output.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "converted_from": str(trained.folder)}
    save_file(model_state_dict(trained.model), str(output / MODEL_FILE), metadata=metadata)
    save_config(trained.config, output / CONFIG_FILE)
    typer.echo(
        f"wrote {output}: a {trained.config.model.kind} model converted from {trained.folder} "
        f"(Nf={trained.config.data.num_frames}, Nw={trained.config.data.max_words}); "
        f"evaluate it with `vtrkit eval {output} --set data.dataset=... --set data.root=...`"
    )
