"""The index catalog: an SQLite file listing videos, their windows and the index's settings.

The catalog is the single commit point of a build. A video's features are written to the feature
store and flushed first; then one transaction records the video, its windows (each pointing at a
store row), its thumbnails and the new committed row count. A process killed at any moment leaves
either the whole video or none of it, and store rows past the committed count are ignored.

Compaction (:mod:`vtrkit.index.storage.compaction`) also commits in one transaction: it renumbers every
window's row, sets the row count and names the new feature-store folder in ``meta``.

Merging the shards of a sharded build (:mod:`vtrkit.index.build.shard_merge`) commits a chunk of videos per
transaction (:meth:`Catalog.commit_videos`), after flushing their copied rows, with the same
guarantee: a killed merge leaves whole chunks or nothing of them.

Tables: ``videos(id, path, size, mtime_ns, hash, status, error, duration, damage)``,
``windows(id, video_id, start_s, end_s, row)``, ``thumbs(window_id, jpeg)``, ``meta(key, value)``.

A video indexed from a damaged file (packets that do not decode, a file cut short, windows with
fewer frames than the container announced) has status ``ok`` and its ``damage`` column says what
is missing; :meth:`Catalog.videos_with_status` lists it as ``partial``. The column was added after
the first indexes were built: opening an older catalog for writing adds it (NULL: not damaged),
and read-only opens read it as NULL, so old indexes stay readable and old vtrkits still read new
ones.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = "1"
"""The schema new catalogs are created with."""
COMPACTED_SCHEMA_VERSION = "2"
"""Same tables, but ``meta['store']`` names the feature-store folder. Compaction sets it so that a
vtrkit without compaction refuses the catalog instead of reading rows renumbered for another folder
from the old ``features/`` (which may survive a crash) and silently returning wrong windows."""
READABLE_SCHEMAS = frozenset({SCHEMA_VERSION, COMPACTED_SCHEMA_VERSION})
STORE_KEY = "store"
"""``meta`` key naming the active feature-store folder; absent in indexes never compacted."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    duration REAL,
    damage TEXT
);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    row INTEGER NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS windows_by_video ON windows(video_id);
CREATE TABLE IF NOT EXISTS thumbs (
    window_id INTEGER PRIMARY KEY REFERENCES windows(id) ON DELETE CASCADE,
    jpeg BLOB NOT NULL
);
"""


_VIDEO_SELECT = (
    "SELECT id, path, size, mtime_ns, hash, status, error, duration, {damage} AS damage FROM videos"
)


class CatalogError(RuntimeError):
    """The catalog file is missing, unreadable or was written by an incompatible version."""


@dataclass(frozen=True)
class FileStat:
    """What identifies one version of a file: size, modification time and content hash."""

    path: str
    size: int
    mtime_ns: int
    hash: str


@dataclass(frozen=True)
class VideoRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str
    status: str
    """``ok`` (windows indexed) or ``failed`` (``error`` says why)."""
    error: str | None
    duration: float | None
    damage: str | None = None
    """For an ``ok`` video from a damaged file: which windows or seconds are missing."""

    @property
    def condition(self) -> str:
        """``ok``, ``partial`` (indexed, but ``damage`` says what is missing) or ``failed``."""
        if self.status == "ok" and self.damage:
            return "partial"
        return self.status

    @property
    def reason(self) -> str | None:
        """Why the video is failed or partial (None when it is fully indexed)."""
        return self.error if self.status == "failed" else self.damage


@dataclass(frozen=True)
class WindowRow:
    id: int
    video_id: int
    start: float
    end: float
    row: int
    """Row of this window's features in the feature store."""


@dataclass(frozen=True)
class NewWindow:
    """A window to record: its time span, its store row and an optional JPEG thumbnail."""

    start: float
    end: float
    row: int
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class VideoRecord:
    """A whole video to record: ``ok`` with its windows, or ``failed`` with the reason."""

    stat: FileStat
    status: str
    error: str | None
    duration: float | None
    windows: Sequence[NewWindow] = ()
    damage: str | None = None
    """Status ``ok`` only: what the damaged file's windows miss (see :class:`VideoRow`)."""


class Catalog:
    """An open ``catalog.sqlite``; safe to share between threads (calls are serialised)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.is_file():
            raise CatalogError(
                f"no catalog at {self.path}: build the index first (vtrkit index build)"
            )
        uri = f"file:{self.path}?mode={'ro' if readonly else 'rwc'}"
        try:
            self._db = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        self._db.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            # WAL lets a server read while `index add` writes; NORMAL sync is crash-safe for the
            # process (a power loss may drop the last commits, never tear one).
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            if "damage" not in self._video_columns():
                self._db.execute("ALTER TABLE videos ADD COLUMN damage TEXT")
            if self.get_meta("schema") is None:
                self.set_meta({"schema": SCHEMA_VERSION, "rows": "0", "generation": "0"})
        self._video_select = _VIDEO_SELECT.format(
            damage="damage" if "damage" in self._video_columns() else "NULL"
        )
        schema = self.get_meta("schema")
        if schema not in READABLE_SCHEMAS:
            raise CatalogError(
                f"{self.path}: catalog schema {schema!r}, this vtrkit reads "
                f"{' or '.join(repr(v) for v in sorted(READABLE_SCHEMAS))}; "
                "rebuild the index with this version"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _video_columns(self) -> set[str]:
        with self._lock:
            return {row[1] for row in self._db.execute("PRAGMA table_info(videos)")}

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: dict[str, Any]) -> None:
        with self._lock, self._transaction():
            self._set_meta(values)

    def _set_meta(self, values: dict[str, Any]) -> None:
        self._db.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()],
        )

    @property
    def committed_rows(self) -> int:
        """Number of feature-store rows that committed windows may point at."""
        return int(self.get_meta("rows") or 0)

    @property
    def generation(self) -> int:
        """Bumped by every change to the set of windows or their rows (lets derived files detect
        staleness)."""
        return int(self.get_meta("generation") or 0)

    def store_state(self) -> tuple[str | None, int, int]:
        """(store folder name or None for the original ``features/``, committed rows, generation),
        read in one statement so the three always belong to the same commit (a compaction changes
        them together, and reading them one by one could pair a folder with another's count)."""
        with self._lock:
            return self._store_state_locked()

    # -- reads --------------------------------------------------------------------------------

    def video(self, video_id: int) -> VideoRow | None:
        with self._lock:
            row = self._db.execute(self._video_select + " WHERE id = ?", (video_id,)).fetchone()
        return None if row is None else VideoRow(*row)

    def video_by_path(self, path: str) -> VideoRow | None:
        with self._lock:
            row = self._db.execute(self._video_select + " WHERE path = ?", (path,)).fetchone()
        return None if row is None else VideoRow(*row)

    def videos(self, status: str | None = None) -> list[VideoRow]:
        query = self._video_select
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [VideoRow(*r) for r in rows]

    def videos_with_status(self, *conditions: str) -> list[VideoRow]:
        """Videos whose :attr:`VideoRow.condition` is one of ``conditions`` (``ok``,
        ``partial``, ``failed``; all videos when none is given), by id; each row's
        :attr:`VideoRow.reason` says why it is failed or partial.

        E.g. ``videos_with_status("partial", "failed")`` is what ``vtrkit index status`` lists.
        """
        unknown = set(conditions) - {"ok", "partial", "failed"}
        if unknown:
            raise ValueError(f"unknown video status {sorted(unknown)}; use ok, partial or failed")
        rows = self.videos()
        return [v for v in rows if not conditions or v.condition in conditions]

    def windows(self, video_id: int | None = None) -> list[WindowRow]:
        query = "SELECT id, video_id, start_s, end_s, row FROM windows"
        args: tuple[Any, ...] = ()
        if video_id is not None:
            query += " WHERE video_id = ?"
            args = (video_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [WindowRow(*r) for r in rows]

    def windows_by_rows(self, rows: Sequence[int]) -> dict[int, WindowRow]:
        """Map store rows to their windows; rows no live window points at are absent."""
        out: dict[int, WindowRow] = {}
        rows = [int(r) for r in rows]
        with self._lock:
            # Chunked to stay under SQLite's bound-parameter limit.
            for i in range(0, len(rows), 500):
                part = rows[i : i + 500]
                marks = ",".join("?" * len(part))
                for r in self._db.execute(
                    f"SELECT id, video_id, start_s, end_s, row FROM windows WHERE row IN ({marks})",
                    part,
                ):
                    out[r[4]] = WindowRow(*r)
        return out

    def live_rows(self) -> np.ndarray:
        """Sorted store rows of all committed windows, int64 [N]."""
        with self._lock:
            rows = self._db.execute("SELECT row FROM windows ORDER BY row").fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def thumbnail(self, window_id: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT jpeg FROM thumbs WHERE window_id = ?", (window_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def thumbnails(self, window_ids: Sequence[int]) -> dict[int, bytes]:
        """Thumbnails of ``window_ids`` by window id; windows without one are absent."""
        ids = [int(w) for w in window_ids]
        out: dict[int, bytes] = {}
        with self._lock:
            # Chunked to stay under SQLite's bound-parameter limit.
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                for window_id, jpeg in self._db.execute(
                    f"SELECT window_id, jpeg FROM thumbs WHERE window_id IN ({marks})", part
                ):
                    out[int(window_id)] = bytes(jpeg)
        return out

    def counts(self) -> dict[str, int]:
        """Videos ok/failed, live windows, committed store rows and dead rows (left by removals)."""
        with self._lock:
            status = dict(
                self._db.execute("SELECT status, COUNT(*) FROM videos GROUP BY status").fetchall()
            )
            windows = self._db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        rows = self.committed_rows
        return {
            "videos": status.get("ok", 0),
            "failed": status.get("failed", 0),
            "windows": windows,
            "rows": rows,
            "dead_rows": rows - windows,
        }

    # -- writes (each one transaction) --------------------------------------------------------

    def commit_video(
        self,
        stat: FileStat,
        duration: float,
        windows: Sequence[NewWindow],
        rows_end: int,
        damage: str | None = None,
    ) -> int:
        """Record an indexed video (replacing any previous version of the same path).

        ``rows_end`` is the feature-store row count after this video's rows, which the caller has
        already flushed; ``damage`` says what a damaged file's windows miss (a partial video).
        Returns the video id (kept when a changed file is re-encoded).
        """
        with self._lock, self._transaction():
            video_id = self._commit_video(stat, duration, windows, damage)
            self._set_meta({"rows": rows_end})
        return video_id

    def record_failure(self, stat: FileStat, error: str) -> int:
        """Record a file that could not be indexed, with the reason; drops any earlier windows."""
        with self._lock, self._transaction():
            return self._record_failure(stat, error)

    def commit_videos(self, videos: Sequence[VideoRecord], rows_end: int) -> list[int]:
        """Record several videos in one transaction, each exactly as :meth:`commit_video` (status
        ``ok``) or :meth:`record_failure` (status ``failed``) would, in order; returns their ids.

        A shard merge (:mod:`vtrkit.index.build.shard_merge`) commits its chunks with this: the chunk lands
        wholly or not at all, and replaying the single-video writes in the same order leaves
        ids and the generation exactly as a single-process build leaves them.
        """
        with self._lock, self._transaction():
            ids = []
            for v in videos:
                if v.status == "ok":
                    ids.append(self._commit_video(v.stat, v.duration or 0.0, v.windows, v.damage))
                else:
                    ids.append(self._record_failure(v.stat, v.error or ""))
            self._set_meta({"rows": rows_end})
        return ids

    def _commit_video(
        self,
        stat: FileStat,
        duration: float,
        windows: Sequence[NewWindow],
        damage: str | None = None,
    ) -> int:
        video_id = self._upsert_video(stat, "ok", None, duration, damage)
        self._db.execute("DELETE FROM windows WHERE video_id = ?", (video_id,))
        for w in windows:
            cur = self._db.execute(
                "INSERT INTO windows(video_id, start_s, end_s, row) VALUES (?, ?, ?, ?)",
                (video_id, float(w.start), float(w.end), int(w.row)),
            )
            if w.thumbnail is not None:
                self._db.execute(
                    "INSERT INTO thumbs(window_id, jpeg) VALUES (?, ?)",
                    (cur.lastrowid, sqlite3.Binary(w.thumbnail)),
                )
        self._set_meta({"generation": self.generation + 1})
        return video_id

    def _record_failure(self, stat: FileStat, error: str) -> int:
        video_id = self._upsert_video(stat, "failed", error, None)
        removed = self._db.execute("DELETE FROM windows WHERE video_id = ?", (video_id,)).rowcount
        if removed:
            self._set_meta({"generation": self.generation + 1})
        return video_id

    def update_stat(self, video_id: int, stat: FileStat) -> None:
        """A file was touched but its content hash is unchanged: remember the new size/mtime."""
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE videos SET size = ?, mtime_ns = ? WHERE id = ?",
                (stat.size, stat.mtime_ns, video_id),
            )

    def remove_videos(self, video_ids: Iterable[int]) -> int:
        """Drop videos and their windows (their store rows become dead); returns how many."""
        ids = [int(v) for v in video_ids]
        if not ids:
            return 0
        with self._lock, self._transaction():
            self._db.executemany("DELETE FROM videos WHERE id = ?", [(v,) for v in ids])
            self._set_meta({"generation": self.generation + 1})
        return len(ids)

    def commit_compaction(
        self,
        live_rows: np.ndarray,
        store: str,
        expected: tuple[str | None, int, int],
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Point the catalog at a compacted feature store, in one transaction.

        ``live_rows`` are the sorted rows of all windows when the compacted store was written, in
        the order it holds them: the window at ``live_rows[i]`` moves to row ``i``. ``store`` is
        the new folder's name and ``expected`` the :meth:`store_state` the copy was made from; if
        anything committed since, the compacted copy is stale and :class:`CatalogError` is raised
        with nothing changed. ``before_commit`` runs inside the transaction just before COMMIT
        (tests kill the process there to show a torn compaction is rolled back).
        """
        live = np.asarray(live_rows, dtype=np.int64)
        with self._lock:
            # The old store is deleted right after this commit, so the commit must survive a
            # power loss too: with NORMAL a WAL commit can be lost, and the catalog would then
            # name a deleted folder. FULL syncs the WAL before COMMIT returns.
            self._db.execute("PRAGMA synchronous = FULL")
            try:
                self._commit_compaction(live, store, expected, before_commit)
            finally:
                self._db.execute("PRAGMA synchronous = NORMAL")

    def _commit_compaction(
        self,
        live: np.ndarray,
        store: str,
        expected: tuple[str | None, int, int],
        before_commit: Callable[[], None] | None,
    ) -> None:
        with self._transaction():
            state = self._store_state_locked()
            windows = self._db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
            if state != expected or windows != len(live):
                raise CatalogError(
                    f"{self.path} changed while it was being compacted (another writer?); "
                    "nothing was changed, run `vtrkit index compact` again"
                )
            # windows.row is UNIQUE and SQLite checks that row by row. Renumbering in ascending
            # order of the old row never collides: the new row i is at most the old row live[i],
            # rows below i already belong to renumbered windows, and every window not yet
            # renumbered has an old row above live[i].
            self._db.executemany(
                "UPDATE windows SET row = ? WHERE row = ?",
                ((new, old) for new, old in enumerate(live.tolist()) if new != old),
            )
            self._set_meta(
                {
                    "rows": len(live),
                    "generation": state[2] + 1,
                    STORE_KEY: store,
                    "schema": COMPACTED_SCHEMA_VERSION,
                }
            )
            if before_commit is not None:
                before_commit()

    def _store_state_locked(self) -> tuple[str | None, int, int]:
        found = dict(
            self._db.execute(
                "SELECT key, value FROM meta WHERE key IN (?, 'rows', 'generation')", (STORE_KEY,)
            ).fetchall()
        )
        return found.get(STORE_KEY), int(found.get("rows", 0)), int(found.get("generation", 0))

    def _upsert_video(
        self,
        stat: FileStat,
        status: str,
        error: str | None,
        duration: float | None,
        damage: str | None = None,
    ) -> int:
        row = self._db.execute("SELECT id FROM videos WHERE path = ?", (stat.path,)).fetchone()
        values = (stat.size, stat.mtime_ns, stat.hash, status, error, duration, damage)
        if row is None:
            cur = self._db.execute(
                "INSERT INTO videos(size, mtime_ns, hash, status, error, duration, damage, path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, stat.path),
            )
            return int(cur.lastrowid)  # type: ignore[arg-type]
        self._db.execute(
            "UPDATE videos SET size = ?, mtime_ns = ?, hash = ?, status = ?, error = ?, "
            "duration = ?, damage = ? WHERE id = ?",
            (*values, row[0]),
        )
        return int(row[0])

    def _transaction(self) -> _Transaction:
        if self.readonly:
            raise CatalogError(f"{self.path} is open read-only; open it writable to change it")
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
