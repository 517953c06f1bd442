"""Merging shard indexes into one library: the second half of a sharded build.

A sharded build (:mod:`vtrkit.index.build.torchrun_build`) has each process encode its share of the videos
into its own ordinary index folder, ``LIB/shards/rank-<r>/``. This module copies those shards
into ``LIB``:

1. Every shard must have been built with ``LIB``'s model and window settings; a shard that was
   not is refused with :class:`ShardMismatchError`, naming its folder, before anything is written.
2. The shards' videos are taken in sorted path order across all shards: the order in which a
   single-process build of the same files commits them. A path held by two shards is refused.
3. Videos that ``LIB`` already records exactly as the shard does (same file stat, status, error
   and duration) were merged by an earlier, interrupted merge and are skipped.
4. The rest are copied in chunks of bounded size: each video's live feature rows are read from
   its shard (a bounded slice at a time) and appended to ``LIB``'s store, the store is flushed,
   and one catalog transaction (:meth:`~vtrkit.index.storage.catalog.Catalog.commit_videos`) records the
   chunk's videos, windows (pointing at the new rows) and thumbnails, plus the new row count.

Crash safety: the chunk's transaction is the only commit point, exactly as for a build. Killed
before it commits, the rows appended for the chunk lie past the committed row count and the next
writer overwrites them; killed after, the chunk is complete. Rerunning the merge skips the
committed chunks (step 3) and continues with the next video, so no video is ever recorded twice
(the catalog's unique path constraint would refuse it anyway) and the result equals an
uninterrupted merge. Because videos are committed in a single build's order, one video per
replayed write, video and window ids, store rows and the catalog generation come out exactly as a
single-process build of the same files makes them; the features are copied bit for bit.

Shard folders are only deleted once their content is committed to ``LIB`` (see
:func:`remove_shards`); a shard left behind by a crash is harmless, as the next sharded build
prunes it to the videos it still needs and merges only those.
"""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vtrkit.index.storage.ann import AnnConfig
from vtrkit.index.storage.catalog import (
    Catalog,
    CatalogError,
    FileStat,
    NewWindow,
    VideoRecord,
    VideoRow,
)
from vtrkit.index.storage.feature_store import FeatureStore, fsync_dir
from vtrkit.index.storage.library import CATALOG_FILE, IndexMismatchError, IndexSettings, Library
from vtrkit.index.storage.lock import writer_lock

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
"""Sub-folder of a library holding the shard indexes of a sharded build."""
CHUNK_BYTES = 64 << 20
"""Feature bytes copied per store append and (about) per catalog transaction."""
CHUNK_VIDEOS = 1000
"""Most videos per catalog transaction (failed videos have no rows, so bytes alone would let a
run of them make one unbounded transaction)."""
_SHARD_NAME = re.compile(r"rank-([0-9]+)")
_COMPARED_SETTINGS = (
    "fingerprint",
    "dim",
    "num_frames",
    "image_size",
    "fps",
    "window_length",
    "window_stride",
)
"""What makes two indexes' features interchangeable. ``source`` (how to reload the model) is not
compared: the same weights may be loaded from another path on another machine, and the
fingerprint already covers the weights and input settings."""


class ShardMismatchError(IndexMismatchError):
    """A shard was built with another model or other settings than the library it is merged into."""


@dataclass
class MergeReport:
    """What one merge did. Paths are the absolute video paths stored in the catalogs."""

    added: list[str] = field(default_factory=list)
    """Indexed videos merged that the library did not hold."""
    updated: list[str] = field(default_factory=list)
    """Indexed videos merged over an older version of the same path in the library."""
    failed: list[str] = field(default_factory=list)
    """Videos merged as failed (their shard could not decode them)."""
    skipped: int = 0
    """Videos the library already held exactly as the shard does (merged by an earlier run)."""
    windows: int = 0
    """Windows (feature rows) copied."""
    seconds: float = 0.0


@dataclass(frozen=True)
class _Entry:
    """One shard video to merge."""

    key: Path
    shard: int
    """Position of its shard in the merge's shard list."""
    video: VideoRow


def shard_folder(library_folder: str | Path, rank: int) -> Path:
    """The shard index folder of process ``rank`` in a sharded build of ``library_folder``."""
    return Path(library_folder) / SHARDS_DIR / f"rank-{int(rank)}"


def shard_rank(folder: str | Path) -> int | None:
    """``rank-<r>`` -> r; None for a folder name that is not a shard's."""
    match = _SHARD_NAME.fullmatch(Path(folder).name)
    return None if match is None else int(match.group(1))


def list_shards(library_folder: str | Path) -> list[Path]:
    """Existing shard folders of ``library_folder``, by rank."""
    root = Path(library_folder) / SHARDS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and shard_rank(p) is not None]
    return sorted(found, key=lambda p: shard_rank(p) or 0)


def check_shard_settings(expected: IndexSettings, found: IndexSettings, shard: Path) -> None:
    """Raise :class:`ShardMismatchError` naming ``shard`` unless its features are interchangeable
    with those of an index built with ``expected``."""
    got, want = found.as_dict(), expected.as_dict()
    diffs = [
        f"{name} {got[name]!r} (library: {want[name]!r})"
        for name in _COMPARED_SETTINGS
        if got[name] != want[name]
    ]
    if diffs:
        raise ShardMismatchError(
            f"shard {shard} was not built with the library's model and settings: "
            f"{'; '.join(diffs)}. Its features cannot be merged; delete {shard} and build again "
            "with the model and window settings the library was built with"
        )


def open_shard(folder: Path, expected: IndexSettings) -> Library | None:
    """Open a shard read-only after checking its settings; None when it holds no catalog (a
    process that was killed before creating it, or had nothing to encode)."""
    if not (folder / CATALOG_FILE).is_file():
        return None
    shard = Library.open(folder)
    try:
        check_shard_settings(expected, shard.settings, folder)
    except BaseException:
        shard.close()
        raise
    return shard


def shard_videos(folder: Path, expected: IndexSettings) -> list[VideoRow]:
    """The videos an existing shard holds, after checking its settings; none for a shard whose
    process was killed before it recorded its settings (it holds no video then)."""
    path = folder / CATALOG_FILE
    if not path.is_file():
        return []
    try:
        catalog = Catalog(path, readonly=True)
    except (CatalogError, sqlite3.Error) as exc:
        # Killed while creating the file: nothing was committed to it.
        log.warning("ignoring the unreadable shard catalog %s: %s", path, exc)
        return []
    try:
        meta = catalog.meta()
        if "fingerprint" not in meta:
            return []
        check_shard_settings(expected, IndexSettings.from_meta(meta, path), folder)
        return catalog.videos()
    finally:
        catalog.close()


def merge_into(
    library: Library,
    shards: Sequence[str | Path],
    chunk_bytes: int | None = None,
    progress: bool = False,
    on_commit: Callable[[int], None] | None = None,
) -> MergeReport:
    """Copy every video of ``shards`` into the writable ``library`` (see the module docstring).

    The caller holds ``library``'s writer lock. Rerunning after an interruption continues where
    the last committed chunk ended. ``chunk_bytes`` defaults to :data:`CHUNK_BYTES`.
    ``on_commit(videos_committed)`` runs after each chunk's transaction (progress hooks; tests
    interrupt the merge there). The ANN is not touched: call ``library.ann()`` afterwards.
    """
    started = time.perf_counter()
    # Read at call time (not bound as a default) so that it can be tuned for the whole module.
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    folders = [Path(s) for s in shards]
    opened: list[Library | None] = []
    try:
        # Open and check every shard before writing anything, so a mismatched one is refused
        # with the library untouched.
        for folder in folders:
            opened.append(open_shard(folder, library.settings))
        report = MergeReport()
        entries = _pending(library, folders, opened, report)
        _copy(library, opened, entries, chunk_bytes, progress, on_commit, report)
    finally:
        for shard in opened:
            if shard is not None:
                shard.close()
    report.seconds = time.perf_counter() - started
    return report


def merge_shards(
    folder: str | Path,
    shards: Sequence[str | Path] | None = None,
    ann_config: AnnConfig = AnnConfig(),
    remove: bool = True,
    progress: bool = False,
    chunk_bytes: int | None = None,
) -> MergeReport:
    """Merge ``shards`` (by default all of ``folder/shards/rank-*``) into the index at ``folder``
    under its writer lock, bring its ANN up to date and, with ``remove``, delete the merged shard
    folders. Safe to rerun after an interruption."""
    shards = list_shards(folder) if shards is None else [Path(s) for s in shards]
    library = Library.open(folder, writable=True)
    try:
        with writer_lock(library.folder):
            library.refresh()
            library.remove_leftovers()
            report = merge_into(library, shards, chunk_bytes, progress)
            library.ann(ann_config)
            if remove:
                remove_shards(library.folder, shards)
    finally:
        library.close()
    return report


def remove_shards(library_folder: Path, shards: Sequence[Path]) -> None:
    """Delete merged shard folders, and the ``shards/`` folder once it is empty."""
    for shard in shards:
        if shard.is_dir():
            shutil.rmtree(shard)
    root = library_folder / SHARDS_DIR
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    fsync_dir(library_folder)


def _pending(
    library: Library,
    folders: list[Path],
    opened: list[Library | None],
    report: MergeReport,
) -> list[_Entry]:
    """The shard videos still to merge, in sorted path order across shards."""
    entries: list[_Entry] = []
    owner: dict[str, int] = {}
    for index, shard in enumerate(opened):
        if shard is None:
            continue
        for video in shard.catalog.videos():
            if video.path in owner:
                raise ValueError(
                    f"{video.path} is in two shards, {folders[owner[video.path]]} and "
                    f"{folders[index]}; cannot tell which to merge. Delete the stale shard "
                    "and build again"
                )
            owner[video.path] = index
            entries.append(_Entry(Path(video.path), index, video))
    # Path order (not string order): the order in which a single-process build, which sorts
    # its files as Paths, commits them; it makes ids and rows come out the same.
    entries.sort(key=lambda e: e.key)
    catalog = library.catalog
    pending = []
    for entry in entries:
        known = catalog.video_by_path(entry.video.path)
        if known is not None and _same_record(known, entry.video):
            report.skipped += 1
            continue
        pending.append(entry)
    return pending


def _same_record(a: VideoRow, b: VideoRow) -> bool:
    fields = ("size", "mtime_ns", "hash", "status", "error", "duration")
    return all(getattr(a, name) == getattr(b, name) for name in fields)


def _copy(
    library: Library,
    shards: list[Library | None],
    entries: list[_Entry],
    chunk_bytes: int,
    progress: bool,
    on_commit: Callable[[int], None] | None,
    report: MergeReport,
) -> None:
    store, catalog = library.store, library.catalog
    # An interrupted merge may have left uncommitted rows past the committed count: write over
    # them, as a build does.
    store.end = store.rows
    row_bytes = 2 * store.dim * (store.num_frames + 1) + store.num_frames
    chunk_rows = max(1, chunk_bytes // row_bytes)
    bar = tqdm(total=len(entries), unit="video", disable=not progress, desc="merging shards")
    batch: list[VideoRecord] = []
    batch_rows = 0
    committed = 0

    def commit() -> None:
        nonlocal batch, batch_rows, committed
        if not batch:
            return
        store.flush()
        catalog.commit_videos(batch, store.end)
        store.mark_committed(store.end)
        committed += len(batch)
        bar.update(len(batch))
        batch, batch_rows = [], 0
        if on_commit is not None:
            on_commit(committed)

    try:
        for entry in entries:
            shard = shards[entry.shard]
            assert shard is not None
            record = _copy_video(shard, store, entry.video, chunk_rows)
            if record.status != "ok":
                report.failed.append(entry.video.path)
            elif catalog.video_by_path(entry.video.path) is not None:
                report.updated.append(entry.video.path)
            else:
                report.added.append(entry.video.path)
            report.windows += len(record.windows)
            batch.append(record)
            batch_rows += len(record.windows)
            if batch_rows >= chunk_rows or len(batch) >= CHUNK_VIDEOS:
                commit()
        commit()
    finally:
        bar.close()


def _copy_video(
    shard: Library, store: FeatureStore, video: VideoRow, chunk_rows: int
) -> VideoRecord:
    """Append ``video``'s feature rows from ``shard`` to ``store`` (uncommitted) and return the
    record to commit, its windows pointing at the new rows."""
    stat = _file_stat(video)
    if video.status != "ok":
        return VideoRecord(stat, video.status, video.error, video.duration)
    windows = shard.catalog.windows(video.id)
    thumbs = shard.catalog.thumbnails([w.id for w in windows])
    source_rows = np.asarray([w.row for w in windows], dtype=np.int64)
    new_rows: list[np.ndarray] = []
    for start in range(0, len(source_rows), chunk_rows):
        part = source_rows[start : start + chunk_rows]
        # Raw float16/uint8 values, so the copy is bit-identical to what the shard encoded.
        new_rows.append(
            store.append(
                shard.store.pooled(part), shard.store.frames(part), shard.store.mask_u8(part)
            )
        )
    rows = np.concatenate(new_rows) if new_rows else np.zeros(0, np.int64)
    new_windows = [
        NewWindow(w.start, w.end, int(row), thumbs.get(w.id))
        for w, row in zip(windows, rows.tolist(), strict=True)
    ]
    return VideoRecord(stat, "ok", None, video.duration, new_windows, video.damage)


def _file_stat(video: VideoRow) -> FileStat:
    return FileStat(video.path, video.size, video.mtime_ns, video.hash)
