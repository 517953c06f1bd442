"""Store compaction: rewrite the feature store keeping only the rows that live windows point at.

Removing or re-encoding a video leaves its old feature rows behind ("dead rows", counted by
``vtrkit index status``): the store is append-only and ANN ids are store rows, so a removal never
renumbers anything. Compaction reclaims that space:

1. Under the writer lock (:mod:`vtrkit.index.storage.lock`), leftovers of earlier compactions are
   deleted and the sorted live rows are read from the catalog.
2. Those rows are copied, in order and in chunks of bounded size, into a new folder
   ``features-<n+1>/`` that nothing references yet; its files are fsynced.
3. One catalog transaction renumbers every window (old row ``live[i]`` becomes row ``i``), sets
   the committed row count, bumps the generation and names the new folder in ``meta['store']``.
4. The old store folder (with its ANN) is deleted.
5. The ANN is rebuilt over the new row numbers and saved inside the new folder.

Crash safety: the transaction in step 3 is the only commit point. Killed before it commits, the
catalog still names the old folder with the old rows, which are untouched; the half-written or
complete new folder is never opened and the next writer deletes it. Killed after it commits, the
catalog names the new folder, whose files were durable before the commit; the old folder is never
opened again and the next writer deletes it. SQLite applies the transaction wholly or not at all,
so no state mixes old numbers with the new folder. The new files are fsynced before the commit and
the commit is synced before the old folder is deleted, so this holds for a power loss too. The
transaction also moves the catalog to schema 2, which a vtrkit without compaction refuses to open
rather than read renumbered rows from a surviving old ``features/``. The ANN is derived data tied to its store
folder (see :mod:`vtrkit.index.storage.library`): an ANN holding old row numbers is never read with the
new store, and a missing one is rebuilt on open. Either way searches return what they returned
before the compaction.

A reader with the index open (e.g. ``vtrkit serve``) keeps its old files mapped (on POSIX systems
a deleted file stays readable while mapped) and moves to the new folder at its next query.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vtrkit.index.storage.ann import AnnConfig
from vtrkit.index.storage.catalog import CatalogError
from vtrkit.index.storage.feature_store import STORE_FILES, FeatureStore, StoreError, write_store
from vtrkit.index.storage.library import FEATURES_DIR, Library
from vtrkit.index.storage.lock import writer_lock

CHUNK_BYTES = 64 << 20
"""Feature bytes copied per chunk: memory stays at about this much whatever the store's size."""


@dataclass(frozen=True)
class CompactReport:
    """What one compaction did; byte counts are the feature files' sizes on disk."""

    folder: Path
    compacted: bool
    """False when there were no dead rows (nothing was rewritten)."""
    rows_before: int
    rows_after: int
    bytes_before: int
    bytes_after: int
    store: str
    """The active store folder afterwards."""
    seconds: float

    @property
    def dead_rows(self) -> int:
        return self.rows_before - self.rows_after

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after

    def summary(self) -> str:
        if not self.compacted:
            return (
                f"nothing to compact in {self.folder}: all {self.rows_before} feature rows are "
                f"live ({format_bytes(self.bytes_before)})"
            )
        return (
            f"compacted {self.folder}: {self.rows_before} -> {self.rows_after} feature rows "
            f"({self.dead_rows} dead rows dropped), {format_bytes(self.bytes_before)} -> "
            f"{format_bytes(self.bytes_after)} ({format_bytes(self.bytes_reclaimed)} reclaimed) "
            f"in {self.seconds:.1f} s"
        )


def format_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _checkpoint(stage: str) -> None:
    """Marks the points between compaction steps; does nothing.

    Tests replace it to kill the process at ``stage``: ``copying`` (after each chunk), ``written``
    (new folder durable, catalog untouched), ``in-transaction`` (rows renumbered, not committed),
    ``committed`` (old folder not yet deleted), ``cleaned`` (ANN not yet rebuilt).
    """


def compact_index(
    folder: str | Path,
    ann_config: AnnConfig = AnnConfig(),
    chunk_rows: int | None = None,
    progress: bool = False,
) -> CompactReport:
    """Compact the index at ``folder`` (see the module docstring); safe to interrupt.

    Raises :class:`~vtrkit.index.storage.catalog.CatalogError` if ``folder`` is not an index and
    :class:`~vtrkit.index.storage.lock.IndexBusyError` if another process is writing to it.
    """
    library = Library.open(folder, writable=True)
    try:
        return compact_library(library, ann_config, chunk_rows, progress)
    finally:
        library.close()


def compact_library(
    library: Library,
    ann_config: AnnConfig = AnnConfig(),
    chunk_rows: int | None = None,
    progress: bool = False,
) -> CompactReport:
    """Compact an index opened writable. ``chunk_rows`` caps the rows copied at once (default:
    about :data:`CHUNK_BYTES` of features); the library moves to the new store."""
    if not library.writable:
        raise ValueError(
            f"{library.folder} is open read-only; open it writable to compact it "
            "(or run `vtrkit index compact`)"
        )
    started = time.perf_counter()
    with writer_lock(library.folder):
        library.refresh()
        library.remove_leftovers()
        catalog = library.catalog
        state = catalog.store_state()
        live = catalog.live_rows()
        rows_before = state[1]
        bytes_before = store_bytes(library.store_dir)
        if len(live) == rows_before:
            return CompactReport(
                library.folder,
                False,
                rows_before,
                rows_before,
                bytes_before,
                bytes_before,
                library.store_name,
                time.perf_counter() - started,
            )
        if (state[0] or FEATURES_DIR) != library.store_name or state[1] != library.store.rows:
            raise CatalogError(f"{library.folder} changed while being opened; try again")
        if len(live) and (live[0] < 0 or live[-1] >= rows_before):
            raise StoreError(
                f"{library.folder}: windows point at rows outside the {rows_before} committed "
                "ones; the catalog is damaged, rebuild the index"
            )
        new_name = library.next_store_name()
        new_dir = library.folder / new_name
        _copy_and_commit(library, live, state, new_dir, chunk_rows, progress)
        _checkpoint("committed")

        library.refresh()  # now reading the new folder
        library.remove_leftovers()  # the old folder (best effort: it is never read again)
        _checkpoint("cleaned")
        library.ann(ann_config)  # rebuilt over the new row numbers and saved in new_dir
        return CompactReport(
            library.folder,
            True,
            rows_before,
            len(live),
            bytes_before,
            store_bytes(new_dir),
            new_name,
            time.perf_counter() - started,
        )


def _copy_and_commit(
    library: Library,
    live: np.ndarray,
    state: tuple[str | None, int, int],
    new_dir: Path,
    chunk_rows: int | None,
    progress: bool,
) -> None:
    """Steps 2 and 3: write the live rows to ``new_dir``, then commit the switch to it. On any
    failure before the commit (an error, Ctrl-C) ``new_dir`` is removed again."""
    store = library.store
    if chunk_rows is None:
        row_bytes = (store.num_frames + 1) * store.dim * 2 + store.num_frames
        chunk_rows = max(1, CHUNK_BYTES // row_bytes)
    bar = tqdm(total=len(live), unit="row", desc="compacting", disable=not progress)
    try:
        written = write_store(
            new_dir, store.dim, store.num_frames, _live_chunks(store, live, chunk_rows, bar)
        )
        if written != len(live):
            raise StoreError(f"copied {written} rows into {new_dir}, expected {len(live)}")
        _checkpoint("written")
        library.catalog.commit_compaction(
            live, new_dir.name, state, before_commit=lambda: _checkpoint("in-transaction")
        )
    except BaseException:
        # Only delete the copy if the catalog does not name it: a failing COMMIT statement may
        # leave it unclear whether the switch happened, and then the folder must stay.
        try:
            committed = library.catalog.store_state()[0] == new_dir.name
        except Exception:
            committed = True
        if not committed:
            shutil.rmtree(new_dir, ignore_errors=True)
        raise
    finally:
        bar.close()


def _live_chunks(
    store: FeatureStore, live: np.ndarray, chunk_rows: int, bar: tqdm
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pooled, frames, mask) of ``live`` rows, ``chunk_rows`` at a time, as stored (float16,
    uint8), so the copy is bit-identical and memory stays at one chunk."""
    for start in range(0, len(live), chunk_rows):
        rows = live[start : start + chunk_rows]
        yield store.pooled(rows), store.frames(rows), store.mask_u8(rows)
        bar.update(len(rows))
        _checkpoint("copying")


def store_bytes(folder: Path) -> int:
    """Size on disk of a store folder's feature files (missing files count 0)."""
    total = 0
    for name in STORE_FILES:
        path = folder / name
        if path.is_file():
            total += path.stat().st_size
    return total
