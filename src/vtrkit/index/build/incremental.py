"""Building and updating an index: find videos, encode new or changed ones, drop removed ones.

Every window is encoded once. A video is committed in one catalog transaction after its features
are flushed to the store, so a killed build loses at most the videos in flight and a rerun skips
what is done and produces the same rows as an uninterrupted build. Files that cannot be decoded are
recorded as failed with the reason (and not retried until they change); the build goes on and the
report lists them. Decoding runs in background threads while the model encodes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from vtrkit.index.build.discovery import collect_videos, expand_sources  # noqa: F401
from vtrkit.index.storage.ann import AnnConfig
from vtrkit.index.storage.catalog import Catalog, FileStat, NewWindow
from vtrkit.index.build.window_decoding import DecodedVideo, decode_windows
from vtrkit.inference import Encoder
from vtrkit.index.storage.library import CATALOG_FILE, IndexSettings, Library, check_encoder
from vtrkit.index.storage.lock import writer_lock
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
    return encoder.num_frames / encoder.fps


def open_for_writing(
    folder: str | Path,
    encoder: Encoder,
    window_length: float | None = None,
    window_stride: float | None = None,
    source: dict | None = None,
) -> Library:
    """Create ``folder`` as an index for ``encoder`` (or reopen it, checking it is the same model).

    Window length and stride default to the existing index's values, and for a new index to the
    model's span (Nf / fps) and half of it.
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
        num_frames=encoder.num_frames,
        image_size=encoder.image_size,
        fps=float(encoder.fps),
        window_length=length,
        window_stride=stride,
        source=source or getattr(encoder, "source", None) or {"kind": "custom"},
    )
    library = Library.create(folder, settings)
    check_encoder(library.settings, encoder, library.folder)
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

    def _decode(self, job: Job) -> DecodedVideo | str:
        s = self.library.settings
        try:
            return decode_windows(
                job.stat.path, s.num_frames, s.image_size, s.fps, s.window_length, s.window_stride
            )
        except Exception as exc:  # any broken file is recorded, never fatal to the build
            log.debug("decoding %s failed", job.stat.path, exc_info=True)
            cause = getattr(exc, "cause", None)
            reason = str(cause) if cause is not None else str(exc)
            return f"{type(exc).__name__}: {reason}"

    def _decoded(self, jobs: list[Job]) -> Iterator[tuple[Job, DecodedVideo | str]]:
        """Decode in worker threads, a few videos ahead, yielding in job order."""
        with ThreadPoolExecutor(max(1, self.decode_workers)) as pool:
            ahead: deque[tuple[Job, Future]] = deque()
            pending = iter(jobs)
            for job in pending:
                ahead.append((job, pool.submit(self._decode, job)))
                if len(ahead) > 2 * self.decode_workers:
                    break
            while ahead:
                job, future = ahead.popleft()
                nxt = next(pending, None)
                if nxt is not None:
                    ahead.append((nxt, pool.submit(self._decode, nxt)))
                yield job, future.result()

    def _encode_all(self, jobs: list[Job], report: BuildReport) -> None:
        bar = tqdm(
            total=len(jobs), unit="video", disable=not self.progress, desc="indexing", smoothing=0.1
        )
        batch: list[tuple[Job, DecodedVideo]] = []
        try:
            for job, result in self._decoded(jobs):
                if isinstance(result, str):
                    # Keep commit order equal to job order: flush what is waiting first.
                    self._commit_batch(batch, report, bar)
                    batch = []
                    self.library.catalog.record_failure(job.stat, result)
                    bar.update(1)
                    continue
                batch.append((job, result))
                if sum(len(d.windows) for _, d in batch) >= self.batch_windows:
                    self._commit_batch(batch, report, bar)
                    batch = []
            self._commit_batch(batch, report, bar)
        finally:
            bar.close()

    def _commit_batch(
        self, batch: list[tuple[Job, DecodedVideo]], report: BuildReport, bar: tqdm
    ) -> None:
        """Encode the windows of several videos in one pass, then commit video by video."""
        if not batch:
            return
        frames = torch.cat([d.frames for _, d in batch])
        mask = torch.cat([d.mask for _, d in batch])
        features = self.encoder.encode_video_windows(frames, mask)
        store, catalog = self.library.store, self.library.catalog
        offset = 0
        for job, decoded in batch:
            count = len(decoded.windows)
            part = features.slice(offset, offset + count)
            offset += count
            rows = self._append(part)
            store.flush()
            windows = [
                NewWindow(start, end, int(row), thumb)
                for (start, end), row, thumb in zip(
                    decoded.windows, rows, decoded.thumbnails, strict=True
                )
            ]
            catalog.commit_video(job.stat, decoded.duration, windows, store.end)
            store.mark_committed(store.end)
            (report.updated if job.existed else report.added).append(job.stat.path)
            report.windows += count
            bar.update(1)
            bar.set_postfix(windows=report.windows, refresh=False)

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
) -> BuildReport:
    """Make the index at ``out`` mirror ``videos`` (a folder, a list file, a video or a list of
    paths): new files are encoded, changed files re-encoded, files no longer present dropped.
    Rerunning after a crash resumes where the last committed video left off."""
    paths = expand_sources(videos)
    library = open_for_writing(out, encoder, window_length, window_stride)
    try:
        updater = IndexUpdater(
            library, encoder, batch_windows, decode_workers, ann_config, progress
        )
        return updater.update(paths, remove_missing=True)
    finally:
        library.close()
