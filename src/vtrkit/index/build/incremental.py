"""Building and updating an index: find videos, encode new or changed ones, drop removed ones.

Each video is decoded once, in one forward pass over the file, in decode-ahead worker threads
(:mod:`vtrkit.index.build.frame_decoding`, :mod:`vtrkit.index.build.pipeline`); each sampled frame
is encoded once, in batches filled across videos, and every window (temporal encoder, pooling,
stored per-frame features) is built from the cached frame features of its seconds. A video is
committed in one catalog transaction right after its features are flushed to the store, so a
killed build loses at most the videos in flight and a rerun skips what is done and produces the
same rows as an uninterrupted build. Files that cannot be decoded are recorded as failed with the
reason (and not retried until they change); damaged files are indexed as partial with what is
missing; the build goes on and the report lists failures.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vtrkit.index.build.discovery import collect_videos, expand_sources  # noqa: F401
from vtrkit.index.build.frame_decoding import (
    WINDOW_MODES,
    SampledFrame,
    VideoPlan,
    WindowMode,
    WindowSpec,
    decode_video,
)
from vtrkit.index.build.pipeline import DecodeAhead, EncodedVideo, FramePipeline
from vtrkit.index.storage.ann import AnnConfig
from vtrkit.index.storage.catalog import Catalog, FileStat, NewWindow
from vtrkit.index.storage.library import CATALOG_FILE, IndexSettings, Library, check_encoder
from vtrkit.index.storage.lock import writer_lock
from vtrkit.inference import Encoder
from vtrkit.models.base import VideoFeatures

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What one build or add did. Paths are the absolute paths stored in the catalog."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    """Changed files that were re-encoded."""
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of every file that is recorded as failed, this run or earlier."""
    windows: int = 0
    """Windows encoded in this run."""
    frames: int = 0
    """Distinct frames encoded in this run (a frame shared by overlapping windows counts once)."""
    seconds: float = 0.0
    windows_per_rank: list[int] = field(default_factory=list)
    """Sharded builds only: windows each process encoded this run, by rank."""

    def summary(self) -> str:
        lines = [
            f"{len(self.added)} added, {len(self.updated)} re-encoded, {len(self.removed)} removed, "
            f"{self.unchanged} unchanged, {len(self.failed)} failed; {self.windows} windows "
            f"encoded in {self.seconds:.1f} s"
        ]
        if self.windows_per_rank:
            per_rank = ", ".join(f"rank {r}: {n}" for r, n in enumerate(self.windows_per_rank))
            lines.append(f"  sharded over {len(self.windows_per_rank)} processes ({per_rank})")
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file's content (hex, first 32 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:32]


def _stat(path: Path, digest: str = "") -> FileStat:
    st = path.stat()
    return FileStat(str(path), st.st_size, st.st_mtime_ns, digest)


@dataclass
class Job:
    """A file the plan says needs encoding: its stat (with the content hash, unless planned with
    ``hash_new=False``) and whether the index already holds an older version of it (re-encoded
    under the same video id)."""

    stat: FileStat
    existed: bool


def default_window(encoder: Encoder) -> float:
    """Window length in seconds: the span the model sees at once (Nf frames at its fps)."""
    return encoder.sampling.span


WINDOW_MODE_KEY = "window_mode"
"""Catalog ``meta`` key holding the index's window mode (absent: ``fixed``)."""
DEFAULT_WINDOW_MODE: WindowMode = "fixed"
"""Window mode of a new index when none is asked for."""


def window_mode_of(catalog: Catalog) -> WindowMode:
    """The window mode an index was built with (``fixed`` for indexes made before shots)."""
    mode = catalog.get_meta(WINDOW_MODE_KEY) or "fixed"
    if mode not in WINDOW_MODES:
        raise ValueError(f"{catalog.path}: unknown window mode {mode!r} in the catalog")
    return mode  # type: ignore[return-value]


def _set_window_mode(library: Library, windows: str | None) -> None:
    """Record ``windows`` for a new index; refuse a different one for an existing index."""
    if windows is not None and windows not in WINDOW_MODES:
        raise ValueError(
            f"unknown window mode {windows!r} (--windows): use {' or '.join(WINDOW_MODES)}"
        )
    catalog = library.catalog
    recorded = catalog.get_meta(WINDOW_MODE_KEY)
    if recorded is None and catalog.videos():
        recorded = "fixed"  # built before window modes existed
    if recorded is not None and windows is not None and windows != recorded:
        raise ValueError(
            f"{library.folder} was built with --windows {recorded}; build a new index (another "
            f"-o folder) for --windows {windows}, or leave --windows out to keep {recorded}"
        )
    if catalog.get_meta(WINDOW_MODE_KEY) is None:
        catalog.set_meta({WINDOW_MODE_KEY: recorded or windows or DEFAULT_WINDOW_MODE})


def open_for_writing(
    folder: str | Path,
    encoder: Encoder,
    window_length: float | None = None,
    window_stride: float | None = None,
    source: dict | None = None,
    windows: WindowMode | None = None,
) -> Library:
    """Create ``folder`` as an index for ``encoder`` (or reopen it, checking it is the same model).

    Window length and stride default to the existing index's values, and for a new index to the
    model's span (Nf / fps) and half of it. ``windows`` (``fixed`` or ``shots``) defaults to the
    existing index's mode, and for a new index to :data:`DEFAULT_WINDOW_MODE`.
    """
    existing = _existing_settings(Path(folder))
    if window_length is None:
        window_length = existing.window_length if existing else default_window(encoder)
    if window_stride is None:
        window_stride = existing.window_stride if existing else window_length / 2
    length, stride = float(window_length), float(window_stride)
    dim = int(encoder.encode_texts(["a"]).sentence.shape[1])
    settings = IndexSettings(
        fingerprint=encoder.fingerprint(),
        dim=dim,
        sampling=encoder.sampling,
        window_length=length,
        window_stride=stride,
        source=source or getattr(encoder, "source", None) or {"kind": "custom"},
    )
    library = Library.create(folder, settings)
    try:
        check_encoder(library.settings, encoder, library.folder)
        _set_window_mode(library, windows)
    except BaseException:
        library.close()
        raise
    return library


def _existing_settings(folder: Path) -> IndexSettings | None:
    path = folder / CATALOG_FILE
    if not path.is_file():
        return None
    catalog = Catalog(path, readonly=True)
    try:
        meta = catalog.meta()
    finally:
        catalog.close()
    return IndexSettings.from_meta(meta, path) if "fingerprint" in meta else None


class IndexUpdater:
    """Brings a writable :class:`Library` up to date with a set of video files."""

    def __init__(
        self,
        library: Library,
        encoder: Encoder,
        batch_windows: int = 16,
        decode_workers: int = 2,
        ann_config: AnnConfig = AnnConfig(),
        progress: bool = False,
    ) -> None:
        if not library.writable:
            raise ValueError(
                f"{library.folder} is open read-only; open it with "
                "VideoIndex.open(path, writable=True) to add videos"
            )
        check_encoder(library.settings, encoder, library.folder)
        self.library = library
        self.encoder = encoder
        self.batch_windows = batch_windows
        self.decode_workers = decode_workers
        self.ann_config = ann_config
        self.progress = progress

    def update(
        self, paths: Iterable[Path], remove_missing: bool, shard: bool = False
    ) -> BuildReport:
        """Encode new and changed ``paths``; with ``remove_missing`` drop every catalogued video
        not among them (a build mirrors its source), otherwise only videos whose files are gone
        from among ``paths`` are left alone (``add`` is additive).

        ``shard=True`` is for a shard of a sharded build (:mod:`vtrkit.index.build.torchrun_build`), which is
        merged and never searched: no ANN is built, and failures are left for the merged build
        to report.

        Holds the index's writer lock throughout (:class:`~vtrkit.index.storage.lock.IndexBusyError` if
        another build, add or compaction is running)."""
        with writer_lock(self.library.folder):
            self.prepare()
            return self._update(paths, remove_missing, shard)

    def prepare(self) -> None:
        """Catch up with other writers before writing; call while holding the writer lock."""
        # Another writer may have committed (or compacted into a new store folder) since this
        # library was opened: append after its rows, to the active folder.
        self.library.refresh()
        self.library.remove_leftovers()

    def _update(self, paths: Iterable[Path], remove_missing: bool, shard: bool) -> BuildReport:
        started = time.perf_counter()
        report = BuildReport()
        wanted = [Path(p).resolve() for p in paths]
        jobs = self.plan(wanted, report)
        if remove_missing:
            self.remove_missing(wanted, report)
        self._encode_all(jobs, report)
        if shard:
            report.seconds = time.perf_counter() - started
        else:
            self.finish(report, started)
        return report

    def remove_missing(self, wanted: Sequence[Path], report: BuildReport) -> None:
        """Drop every catalogued video whose path is not in ``wanted`` (resolved paths)."""
        catalog = self.library.catalog
        keep = {str(p) for p in wanted}
        gone = [v for v in catalog.videos() if v.path not in keep]
        catalog.remove_videos(v.id for v in gone)
        report.removed = [v.path for v in gone]

    def finish(self, report: BuildReport, started: float) -> None:
        """Bring the ANN up to date, list every failed file in the report and log them."""
        catalog = self.library.catalog
        self.library.ann(self.ann_config)
        report.failed = [(v.path, v.error or "") for v in catalog.videos(status="failed")]
        report.seconds = time.perf_counter() - started
        for path, reason in report.failed:
            log.warning("not indexed: %s: %s", path, reason)

    def plan(self, paths: Sequence[Path], report: BuildReport, hash_new: bool = True) -> list[Job]:
        """Which files need encoding, in the order of ``paths``; files only touched (same hash)
        just get their stat updated and, like unchanged files, are counted in ``report``.

        With ``hash_new=False`` files the index does not know are not hashed (their job's hash is
        empty): a sharded build leaves that to the process that encodes them."""
        catalog = self.library.catalog
        jobs = []
        for path in paths:
            stat = _stat(path)
            known = catalog.video_by_path(stat.path)
            if known and (known.size, known.mtime_ns) == (stat.size, stat.mtime_ns):
                report.unchanged += 1
                continue
            if known is None and not hash_new:
                jobs.append(Job(stat, existed=False))
                continue
            stat = _stat(path, hash_file(path))
            if known and known.hash == stat.hash:
                catalog.update_stat(known.id, stat)
                report.unchanged += 1
                continue
            jobs.append(Job(stat, known is not None))
        return jobs

    def window_spec(self) -> WindowSpec:
        """How this index cuts and samples videos (its settings and window mode)."""
        s = self.library.settings
        mode = window_mode_of(self.library.catalog)
        return WindowSpec(s.sampling, s.window_length, s.window_stride, mode)

    def _decode(self, job: Job, emit: Callable[[SampledFrame], None]) -> VideoPlan | str:
        try:
            return decode_video(job.stat.path, self._spec, emit)
        except Exception as exc:  # any broken file is recorded, never fatal to the build
            log.debug("decoding %s failed", job.stat.path, exc_info=True)
            cause = getattr(exc, "cause", None)
            reason = str(cause) if cause is not None else str(exc)
            return f"{type(exc).__name__}: {reason}"

    def _encode_all(self, jobs: list[Job], report: BuildReport) -> None:
        """Decode each job once (ahead, in worker threads), encode its frames in batches shared
        across videos, and commit each video as soon as its windows are encoded, in job order."""
        bar = tqdm(
            total=len(jobs), unit="video", disable=not self.progress, desc="indexing", smoothing=0.1
        )
        self._spec = self.window_spec()
        pipeline: FramePipeline[Job] = FramePipeline(self.encoder, self.batch_windows)
        try:
            with DecodeAhead(jobs, self._decode, self.decode_workers) as decoded:
                for done in pipeline.run(iter(decoded)):
                    self._commit(done, report)
                    report.frames = pipeline.frames_encoded
                    bar.update(1)
                    bar.set_postfix(windows=report.windows, refresh=False)
        finally:
            bar.close()

    def _commit(self, done: EncodedVideo[Job], report: BuildReport) -> None:
        """Write one video's features, flush them, then record it in one catalog transaction."""
        job, plan = done.job, done.plan
        catalog = self.library.catalog
        if plan is None or done.features is None:
            catalog.record_failure(job.stat, done.error or "not decoded")
            return
        store = self.library.store
        rows = self._append(done.features)
        store.flush()
        windows = [
            NewWindow(start, end, int(row), thumb)
            for (start, end), row, thumb in zip(plan.windows, rows, plan.thumbnails, strict=True)
        ]
        catalog.commit_video(job.stat, plan.duration, windows, store.end, plan.damage)
        store.mark_committed(store.end)
        (report.updated if job.existed else report.added).append(job.stat.path)
        report.windows += len(windows)

    def _append(self, part: VideoFeatures):
        return self.library.store.append(
            part.video.float().numpy(), part.frames.float().numpy(), part.mask.numpy()
        )


def build_index(
    videos: str | Path | Sequence[str | Path],
    out: str | Path,
    encoder: Encoder,
    window_length: float | None = None,
    window_stride: float | None = None,
    batch_windows: int = 16,
    decode_workers: int = 2,
    ann_config: AnnConfig = AnnConfig(),
    progress: bool = False,
    windows: WindowMode | None = None,
) -> BuildReport:
    """Make the index at ``out`` mirror ``videos`` (a folder, a list file, a video or a list of
    paths): new files are encoded, changed files re-encoded, files no longer present dropped.
    Rerunning after a crash resumes where the last committed video left off. ``windows`` is
    ``fixed`` (overlapping windows of ``window_length`` every ``window_stride``) or ``shots``
    (windows that start at cuts, see :mod:`vtrkit.index.build.shots`)."""
    paths = expand_sources(videos)
    library = open_for_writing(out, encoder, window_length, window_stride, windows=windows)
    try:
        updater = IndexUpdater(
            library, encoder, batch_windows, decode_workers, ann_config, progress
        )
        return updater.update(paths, remove_missing=True)
    finally:
        library.close()
