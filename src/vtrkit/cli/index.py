"""Index and search commands: ``vtrkit index build|add|compact|status``, ``vtrkit search``,
``vtrkit serve``."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from vtrkit.data.sampling import FrameSampling

index_app = typer.Typer(
    help="Build and maintain a searchable index of a video collection.", no_args_is_help=True
)

F = TypeVar("F", bound=Callable[..., Any])

QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
"""Set for commands that load a model, unless -v: transformers' "Loading weights" bar and INFO
lines are not the user's business on every search."""


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("search")(search)
    app.command("serve")(serve)


def _user_errors(func: F) -> F:
    """Expected failures (wrong paths, mismatched models, bad options) print one clear line."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from vtrkit.config import ConfigError
        from vtrkit.data.decode import VideoDecodeError
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
            VideoDecodeError,
        )
        try:
            return func(*args, **kwargs)
        except expected as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _verbose() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


@contextmanager
def _quiet(own_info: bool = False) -> Iterator[None]:
    """Silence transformers' progress bars and INFO lines (and with ``own_info`` vtrkit's INFO
    lines) for one command; ``vtrkit -v`` shows everything."""
    if _verbose():
        yield
        return
    ours_env = [key for key in QUIET_ENV if key not in os.environ]
    os.environ.update({key: QUIET_ENV[key] for key in ours_env})
    hf_logging = None
    if "transformers" in sys.modules:  # already imported: the variables were read
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    ours = logging.getLogger("vtrkit")
    level = ours.level
    if own_info:
        ours.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ours.setLevel(level)
        # Leave an embedding process (or a test session) as it was.
        for key in ours_env:
            os.environ.pop(key, None)
        if hf_logging is not None:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()


def _print_outcome(
    report: Any, skipped: Sequence[Any], kept: Sequence[Path] = (), pruned: Sequence[str] = ()
) -> None:
    """A build's or add's summary, then every file it removed, kept or skipped, by name."""
    typer.echo(report.summary())
    for path in report.removed:
        why = "added with `index add`, dropped by --prune" if path in pruned else "not in VIDEOS"
        typer.echo(f"  removed: {path} ({why})")
    for path in kept:
        typer.echo(
            f"  kept: {path} (added with `vtrkit index add`, not in VIDEOS; --prune drops it)"
        )
    if skipped:
        typer.echo(f"{len(skipped)} skipped before decoding (nothing to index):")
    for entry in skipped:
        typer.echo(f"  skipped: {entry.path}: {entry.reason}")


def _encoder(
    checkpoint: Path | None,
    backbone: Path | None,
    sampling: FrameSampling,
    device: str,
    batch: int,
    precision: str = "fp32",
):
    """The model to index with: a trained checkpoint, or ``backbone`` zero-shot sampling frames
    as ``sampling`` says (the --num-frames/--fps/--image-size options, --backbone only)."""
    from vtrkit.inference import load_backbone_for_index, load_model_for_index

    if (checkpoint is None) == (backbone is None):
        raise typer.BadParameter(
            "give exactly one of --checkpoint (a trained vtrkit model) or --backbone "
            "(a CLIP checkpoint used zero-shot with mean pooling)"
        )
    if checkpoint is not None:
        return load_model_for_index(
            checkpoint, device=device, batch_size=batch, precision=precision
        )
    assert backbone is not None
    return load_backbone_for_index(backbone, sampling, device, batch, precision=precision)


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
    # No square brackets in help texts: the help renderer takes them for markup and drops them.
    window: float | None = typer.Option(
        None,
        help="Window length in seconds. Default: the index's own for an existing index, else the "
        "span the model sees at once (frames / fps).",
    ),
    stride: float | None = typer.Option(
        None, help="Seconds between window starts. Default: the index's own, else half a window."
    ),
    batch: int = typer.Option(16, min=1, help="Windows per forward pass."),
    workers: int = typer.Option(2, min=1, help="Decoding threads."),
    precision: str = typer.Option(
        "auto",
        help="Arithmetic of the frame tower: auto (bf16 where the CPU or GPU computes it "
        "natively, else fp32), fp32, bf16 or int8. Stored features agree with fp32 to a cosine of "
        "0.9999 (benchmarks/index_build.py); texts and heads stay fp32.",
    ),
    windows: str | None = typer.Option(
        None,
        "--windows",
        help="fixed: windows of --window seconds every --stride; shots: windows that start at "
        "cuts found by PySceneDetect on the decoded frames. Default: the index's own, else fixed.",
    ),
    prune: bool = typer.Option(
        False,
        help="Also drop videos added with `vtrkit index add` that are not in VIDEOS (by default "
        "a build keeps them while their files exist).",
    ),
    device: str | None = typer.Option(
        None,
        # No square brackets: the help renderer takes them for markup and drops them.
        help="Torch device, e.g. cpu or cuda. Default: cpu, or under torchrun each process's own "
        "GPU (cuda:<LOCAL_RANK>) when CUDA is available; under torchrun, cuda means the same.",
    ),
) -> None:
    """Index VIDEOS into -o LIB: new files are encoded, changed ones re-encoded, removed ones
    dropped (files added with `index add` are kept unless --prune). Every file not indexed is
    named with the reason. Safe to interrupt: rerunning resumes where it stopped.

    Launched by torchrun (e.g. `torchrun --nproc-per-node 4 -m vtrkit index build ...`), each
    process encodes a share of the files into LIB/shards/rank-<r>/ and rank 0 merges the shards
    into LIB; the index is the same as a single-process build's."""
    from vtrkit.data.sampling import FrameSampling
    from vtrkit.index.build.discovery import plan_build, record_build
    from vtrkit.index.build.incremental import build_index
    from vtrkit.index.build.torchrun_build import DistEnv, build_index_sharded, resolve_device

    if windows not in (None, "fixed", "shots"):
        raise typer.BadParameter(f"--windows must be fixed or shots, not {windows!r}")
    env = DistEnv.from_env()
    device = resolve_device(device, env)
    plan = plan_build(videos, output, prune)  # a missing VIDEOS fails before the model loads
    with _quiet():
        sampling = FrameSampling(num_frames, fps, image_size)
        encoder = _encoder(checkpoint, backbone, sampling, device, batch, precision)
    options: dict[str, Any] = dict(
        window_length=window,
        window_stride=stride,
        batch_windows=batch,
        decode_workers=workers,
        progress=True,
        windows=windows,
    )
    if env.sharded:
        report = build_index_sharded(plan.paths, output, encoder, **options)
        if report is None:  # not rank 0: the other ranks print nothing
            return
    else:
        report = build_index(plan.paths, output, encoder, **options)
    record_build(output, plan, report.removed)
    _print_outcome(report, plan.skipped, plan.kept, plan.pruned)


@index_app.command("add")
@_user_errors
def add(
    library: Path = typer.Argument(..., help="Index folder."),
    paths: list[Path] = typer.Argument(..., help="Videos, folders or list files to add."),
    device: str = typer.Option("cpu", help="Torch device."),
) -> None:
    """Add new or changed videos to an index with the model it was built with. A later
    `index build` keeps them (unless --prune)."""
    from vtrkit.index import VideoIndex

    with _quiet(), VideoIndex.open(library, writable=True, device=device) as index:
        report = index.add(paths, progress=True)
    _print_outcome(report, index.last_skipped)


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
    """Counts and settings of an index, and every file not fully indexed with the reason:
    partial (indexed, but part of the file could not be decoded), failed (not indexed) and
    skipped (not a video file, or a name the index cannot store). Does not load the model."""
    from dataclasses import asdict

    from vtrkit.index.storage.library import Library
    from vtrkit.index.storage.skipped import read_skipped

    lib = Library.open(library)
    try:
        problems = [
            {"path": v.path, "status": v.condition, "reason": v.reason or ""}
            for v in lib.catalog.videos_with_status("partial", "failed")
        ]
        info = {
            "index": str(library),
            "counts": lib.catalog.counts(),
            "settings": lib.settings.as_dict(),
            "failed": [
                {"path": p["path"], "error": p["reason"]}
                for p in problems
                if p["status"] == "failed"
            ],
            "problems": problems,
            "skipped": [asdict(s) for s in read_skipped(library)],
        }
    finally:
        lib.close()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    c, s = info["counts"], lib.settings
    partial = sum(item["status"] == "partial" for item in problems)
    typer.echo(
        f"{library}: {c['videos']} videos ({partial} partial), {c['windows']} windows, "
        f"{c['failed']} failed, {len(info['skipped'])} skipped, {c['dead_rows']} dead feature rows"
    )
    if c["dead_rows"]:
        typer.echo(
            f"  dead rows belong to removed or re-encoded videos; run `vtrkit index compact "
            f"{library}` to reclaim their space"
        )
    typer.echo(
        f"model {s.fingerprint} ({s.describe_source()}); windows of {s.window_length:g} s every "
        f"{s.window_stride:g} s; {s.sampling.num_frames} frames at {s.sampling.fps:g} fps, "
        f"{s.sampling.image_size} px"
    )
    for item in problems:
        typer.echo(f"  {item['status']}: {item['path']}: {item['reason']}")
    for entry in info["skipped"]:
        typer.echo(f"  skipped: {entry['path']}: {entry['reason']}")


RERANK_HELP = (
    "Re-rank this many of the best windows by cosine with the model's own head. Default: 100 "
    "when the model has a fine-grained head (X-CLIP, CLIP2TV with matching), else 0 (off)."
)


@_user_errors
def search(
    library: Path = typer.Argument(..., help="Index folder."),
    query: str | None = typer.Argument(None, help="What to look for (omit with --like)."),
    k: int = typer.Option(10, "-k", min=1, help="Number of videos (windows with --windows)."),
    rerank: int | None = typer.Option(None, min=0, help=RERANK_HELP),
    like: Path | None = typer.Option(None, help="Find videos similar to this video instead."),
    windows: bool = typer.Option(
        False, "--windows", help="List windows one by one instead of one line per video."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = typer.Option("cpu", help="Torch device."),
) -> None:
    """Search an index by text (or by example video with --like): one line per video with its
    best moment, its other matching moments below it.

    Each call loads the model (seconds for a large one): `vtrkit serve` or the Python API
    (`VideoIndex.open(...).search_videos(...)`) keep it loaded between queries."""
    from vtrkit.index import VideoIndex
    from vtrkit.index.results import describe_scores

    if (query is None) == (like is None):
        raise typer.BadParameter("give a QUERY or --like FILE (one of them)")
    with _quiet(own_info=True), VideoIndex.open(library, device=device) as index:
        used = 0
        if like is not None:
            hits: list[Any] = (
                index.search_like(like, k=k) if windows else index.search_videos_like(like, k=k)
            )
        else:
            assert query is not None
            used = index.default_rerank if rerank is None else rerank
            if windows:
                hits = index.search(query, k=k, rerank=used)
            else:
                hits = index.search_videos(query, k=k, rerank=used)
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    if not hits:
        typer.echo("no results: the index holds no searchable window")
        return
    typer.echo(describe_scores("head" if used else "cosine", used))
    _print_hits(hits)


def _print_hits(hits: Sequence[Any]) -> None:
    from vtrkit.index.results import format_time

    def span(start: float, end: float) -> str:
        return f"{format_time(start)}-{format_time(end)}"

    typer.echo(f"{'rank':>4}  {'score':>8}  {'moment':<15} video")
    for h in hits:
        typer.echo(f"{h.rank:4d}  {h.score:8.4f}  {span(h.start, h.end):<15} {h.path}")
        moments = getattr(h, "moments", ())
        if moments:
            also = ", ".join(f"{span(m.start, m.end)} ({m.score:.4f})" for m in moments)
            typer.echo(f"{'':16}also {also}")


@_user_errors
def serve(
    library: Path = typer.Argument(..., help="Index folder."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (localhost by default)."),
    port: int = typer.Option(8000, help="Port."),
    rerank: int | None = typer.Option(None, min=0, help=RERANK_HELP),
    query_precision: str = typer.Option(
        "fp32",
        help="Arithmetic of the query text tower: fp32, or bf16 (about 3x the queries per "
        "second on CPUs with bf16 instructions; query features within about 1e-4 in cosine).",
    ),
    max_batch: int = typer.Option(
        64, min=1, help="Most concurrent queries encoded in one pass (1: one at a time)."
    ),
    device: str = typer.Option("cpu", help="Torch device."),
) -> None:
    """Serve a search page and JSON API for an index. The model stays loaded; concurrent
    queries are encoded together and repeated ones come from a cache."""
    from vtrkit.index import VideoIndex
    from vtrkit.serve.app import serve as run

    with _quiet(), VideoIndex.open(library, device=device) as index:
        used = index.default_rerank if rerank is None else rerank
        how = f"re-ranking the best {used} windows with the model's head" if used else "cosine"
        typer.echo(f"serving {library} on http://{host}:{port}/ ({how})")
        run(
            index,
            host=host,
            port=port,
            default_rerank=used,
            query_precision=query_precision,
            max_batch=max_batch,
        )
