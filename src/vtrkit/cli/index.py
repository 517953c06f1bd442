"""Index and search commands: ``vtrkit index build|add|compact|status``, ``vtrkit search``,
``vtrkit serve``."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer

index_app = typer.Typer(
    help="Build and maintain a searchable index of a video collection.", no_args_is_help=True
)

F = TypeVar("F", bound=Callable[..., Any])


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("search")(search)
    app.command("serve")(serve)


def _user_errors(func: F) -> F:
    """Expected failures (wrong paths, mismatched models, bad options) print one clear line."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from vtrkit.config import ConfigError
        from vtrkit.index import CatalogError, IndexMismatchError
        from vtrkit.index.build.torchrun_build import ShardedBuildError

        # Expected in a sharded build too: each rank prints its own line, not a traceback.
        expected = (
            IndexMismatchError,
            CatalogError,
            ConfigError,
            FileNotFoundError,
            ValueError,
            ShardedBuildError,
        )
        try:
            return func(*args, **kwargs)
        except expected as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _encoder(
    checkpoint: Path | None,
    backbone: Path | None,
    num_frames: int,
    image_size: int,
    fps: float,
    device: str,
    batch: int,
):
    from vtrkit.inference import load_backbone_for_index, load_model_for_index

    if (checkpoint is None) == (backbone is None):
        raise typer.BadParameter(
            "give exactly one of --checkpoint (a trained vtrkit model) or --backbone "
            "(a CLIP checkpoint used zero-shot with mean pooling)"
        )
    if checkpoint is not None:
        return load_model_for_index(checkpoint, device=device, batch_size=batch)
    assert backbone is not None
    return load_backbone_for_index(backbone, num_frames, image_size, fps, device, batch)


@index_app.command("build")
@_user_errors
def build(
    videos: Path = typer.Argument(..., help="Folder of videos, a list file (.txt), or a video."),
    output: Path = typer.Option(..., "--output", "-o", help="Index folder to create or update."),
    checkpoint: Path | None = typer.Option(
        None, help="Trained vtrkit checkpoint folder (or run folder)."
    ),
    backbone: Path | None = typer.Option(
        None, help="CLIP checkpoint for zero-shot search (mean pooling)."
    ),
    num_frames: int = typer.Option(12, help="Frames per window (--backbone only)."),
    image_size: int = typer.Option(224, help="Frame size in pixels (--backbone only)."),
    fps: float = typer.Option(1.0, help="Frames sampled per second (--backbone only)."),
    window: float | None = typer.Option(
        None, help="Window length in seconds [default: frames / fps]."
    ),
    stride: float | None = typer.Option(None, help="Window stride in seconds [default: window/2]."),
    batch: int = typer.Option(16, help="Windows per forward pass."),
    workers: int = typer.Option(2, help="Decoding threads."),
    device: str | None = typer.Option(
        None,
        # No square brackets: the help renderer takes them for markup and drops them.
        help="Torch device, e.g. cpu or cuda. Default: cpu, or under torchrun each process's own "
        "GPU (cuda:<LOCAL_RANK>) when CUDA is available; under torchrun, cuda means the same.",
    ),
) -> None:
    """Index VIDEOS into -o LIB: new files are encoded, changed ones re-encoded, removed ones
    dropped. Safe to interrupt: rerunning resumes where it stopped.

    Launched by torchrun (e.g. `torchrun --nproc-per-node 4 -m vtrkit index build ...`), each
    process encodes a share of the files into LIB/shards/rank-<r>/ and rank 0 merges the shards
    into LIB; the index is the same as a single-process build's."""
    from vtrkit.index.build.incremental import build_index
    from vtrkit.index.build.torchrun_build import DistEnv, build_index_sharded, resolve_device

    env = DistEnv.from_env()
    device = resolve_device(device, env)
    encoder = _encoder(checkpoint, backbone, num_frames, image_size, fps, device, batch)
    options: dict[str, Any] = dict(
        window_length=window,
        window_stride=stride,
        batch_windows=batch,
        decode_workers=workers,
        progress=True,
    )
    if env.sharded:
        report = build_index_sharded(videos, output, encoder, **options)
        if report is not None:  # rank 0; the other ranks print nothing
            typer.echo(report.summary())
        return
    typer.echo(build_index(videos, output, encoder, **options).summary())


@index_app.command("add")
@_user_errors
def add(
    library: Path = typer.Argument(..., help="Index folder."),
    paths: list[Path] = typer.Argument(..., help="Videos, folders or list files to add."),
    device: str = typer.Option("cpu", help="Torch device."),
) -> None:
    """Add new or changed videos to an index with the model it was built with."""
    from vtrkit.index import VideoIndex

    with VideoIndex.open(library, writable=True, device=device) as index:
        report = index.add(paths, progress=True)
    typer.echo(report.summary())


@index_app.command("compact")
@_user_errors
def compact(
    library: Path = typer.Argument(..., help="Index folder."),
) -> None:
    """Rewrite the feature store without the dead rows of removed or re-encoded videos.
    Search results are unchanged. Safe to interrupt: the index stays usable either way."""
    from vtrkit.index.storage.compaction import compact_index

    report = compact_index(library, progress=True)
    typer.echo(report.summary())


@index_app.command("status")
@_user_errors
def status(
    library: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Counts, settings and failed files of an index (does not load the model)."""
    from dataclasses import asdict

    from vtrkit.index.storage.library import Library

    lib = Library.open(library)
    try:
        info = {
            "index": str(library),
            "counts": lib.catalog.counts(),
            "settings": asdict(lib.settings),
            "failed": [{"path": v.path, "error": v.error} for v in lib.catalog.videos("failed")],
        }
    finally:
        lib.close()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    c, s = info["counts"], lib.settings
    typer.echo(
        f"{library}: {c['videos']} videos, {c['windows']} windows, {c['failed']} failed, "
        f"{c['dead_rows']} dead feature rows"
    )
    if c["dead_rows"]:
        typer.echo(
            f"  dead rows belong to removed or re-encoded videos; run `vtrkit index compact "
            f"{library}` to reclaim their space"
        )
    typer.echo(
        f"model {s.fingerprint} ({s.describe_source()}); windows of {s.window_length:g} s every "
        f"{s.window_stride:g} s; {s.num_frames} frames at {s.fps:g} fps, {s.image_size} px"
    )
    for item in info["failed"]:
        typer.echo(f"  failed: {item['path']}: {item['error']}")


@_user_errors
def search(
    library: Path = typer.Argument(..., help="Index folder."),
    query: str | None = typer.Argument(None, help="What to look for (omit with --like)."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    rerank: int | None = typer.Option(
        None, help="Re-rank this many ANN candidates with the model's head."
    ),
    like: Path | None = typer.Option(None, help="Find windows similar to this video instead."),
    one_per_video: bool = typer.Option(False, help="Only the best window of each video."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("cpu", help="Torch device."),
) -> None:
    """Search an index by text (or by example video with --like)."""
    from vtrkit.index import VideoIndex

    if (query is None) == (like is None):
        raise typer.BadParameter("give a QUERY or --like FILE (one of them)")
    with VideoIndex.open(library, device=device) as index:
        if like is not None:
            results = index.search_like(like, k=k)
        else:
            assert query is not None
            results = index.search(query, k=k, rerank=rerank, one_per_video=one_per_video)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    for r in results:
        typer.echo(f"{r.rank:3d}  {r.score:8.4f}  {r.start:7.1f}-{r.end:<7.1f} {r.path}")


@_user_errors
def serve(
    library: Path = typer.Argument(..., help="Index folder."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (localhost by default)."),
    port: int = typer.Option(8000, help="Port."),
    rerank: int | None = typer.Option(
        None, help="Re-rank this many candidates per query by default."
    ),
    device: str = typer.Option("cpu", help="Torch device."),
) -> None:
    """Serve a search page and JSON API for an index."""
    from vtrkit.index import VideoIndex
    from vtrkit.serve.app import serve as run

    with VideoIndex.open(library, device=device) as index:
        typer.echo(f"serving {library} on http://{host}:{port}/")
        run(index, host=host, port=port, default_rerank=rerank)
