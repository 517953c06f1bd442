"""Append-only, memory-mapped float16 feature arrays: one row per indexed window.

Three files in the store folder (``features/``, or ``features-<n>/`` once the index has been
compacted, see :mod:`vtrkit.index.storage.compaction`): ``pooled.f16`` [rows, D] (what the ANN searches),
``frames.f16`` [rows, Nf, D] and ``mask.u8`` [rows, Nf] (what the model's head re-ranks with).
``layout.json`` records D and Nf. The store never decides which rows are valid: the catalog holds the
committed row count, and the store is opened with it. Rows appended after that count belong to a
video whose catalog transaction has not happened yet; a crash leaves them behind, and the next
writer overwrites them, so no reader ever sees a torn row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

LAYOUT_FILE = "layout.json"
POOLED_FILE = "pooled.f16"
FRAMES_FILE = "frames.f16"
MASK_FILE = "mask.u8"
STORE_FILES = (POOLED_FILE, FRAMES_FILE, MASK_FILE, LAYOUT_FILE)
_GROW_ROWS = 1024


class StoreError(RuntimeError):
    """The feature files do not match the catalog or the layout (names the file and the fix)."""


class _Array:
    """One growable memory-mapped array with a fixed per-row shape."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...], writable: bool):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        self.writable = writable
        if writable and not path.exists():
            path.touch()
        if not path.is_file():
            raise StoreError(f"feature file {path} is missing; rebuild the index")
        self._map: np.memmap | None = None
        self.capacity = 0
        self._remap()

    def _remap(self) -> None:
        size = self.path.stat().st_size
        if size % self.row_bytes:
            # Only a crash between the file growing and its pages being written can cause this;
            # whole rows are what matters, so ignore a partial tail.
            size -= size % self.row_bytes
        self.capacity = size // self.row_bytes
        self._map = None
        if self.capacity:
            self._map = np.memmap(
                self.path,
                dtype=self.dtype,
                mode="r+" if self.writable else "r",
                shape=(self.capacity, *self.row_shape),
            )

    def ensure(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        new_capacity = max(rows, self.capacity * 2, _GROW_ROWS)
        if self._map is not None:
            self._map.flush()
        self._map = None
        with open(self.path, "r+b") as f:
            f.truncate(new_capacity * self.row_bytes)
        self._remap()

    def write(self, start: int, values: np.ndarray) -> None:
        self.ensure(start + len(values))
        assert self._map is not None
        self._map[start : start + len(values)] = values

    def read(self, rows: np.ndarray | slice) -> np.ndarray:
        if self._map is None:
            return np.zeros((0, *self.row_shape), self.dtype)
        return np.asarray(self._map[rows])

    def flush(self) -> None:
        if self._map is not None:
            self._map.flush()


class FeatureStore:
    """Feature rows of one index; ``rows`` is the committed count the catalog vouches for.

    pooled: [rows, D] float16, frames: [rows, Nf, D] float16, mask: [rows, Nf] bool.
    """

    def __init__(
        self, folder: str | Path, dim: int, num_frames: int, committed_rows: int, writable: bool
    ) -> None:
        self.folder = Path(folder)
        self.dim = int(dim)
        self.num_frames = int(num_frames)
        layout_path = self.folder / LAYOUT_FILE
        layout = _layout(self.dim, self.num_frames)
        if writable:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not layout_path.exists():
                layout_path.write_text(json.dumps(layout))
        if not layout_path.is_file():
            raise StoreError(
                f"{layout_path} is missing; the index folder is incomplete, rebuild it"
            )
        found = json.loads(layout_path.read_text())
        if found != layout:
            raise StoreError(
                f"{layout_path} says {found}, the catalog says {layout}; the index folder mixes "
                "files from two builds, rebuild it"
            )
        self._pooled = _Array(self.folder / POOLED_FILE, np.float16, (self.dim,), writable)
        self._frames = _Array(
            self.folder / FRAMES_FILE, np.float16, (self.num_frames, self.dim), writable
        )
        self._mask = _Array(self.folder / MASK_FILE, np.uint8, (self.num_frames,), writable)
        for arr in (self._pooled, self._frames, self._mask):
            if arr.capacity < committed_rows:
                raise StoreError(
                    f"{arr.path} holds {arr.capacity} rows but the catalog committed "
                    f"{committed_rows}; the feature files were truncated, rebuild the index"
                )
        self.rows = int(committed_rows)
        self.end = self.rows
        """Next row to write; rows in [rows, end) are written but not yet committed."""
        self.writable = writable

    def append(self, pooled: np.ndarray, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Write n rows after ``end`` and return their row numbers, int64 [n].

        pooled: [n, D], frames: [n, Nf, D], mask: [n, Nf] (cast to float16 / uint8).
        """
        if not self.writable:
            raise StoreError(f"{self.folder} is open read-only")
        n = len(pooled)
        if pooled.shape != (n, self.dim) or frames.shape != (n, self.num_frames, self.dim):
            raise StoreError(
                f"feature shapes pooled {pooled.shape} / frames {frames.shape} do not match the "
                f"store layout D={self.dim}, Nf={self.num_frames}"
            )
        if mask.shape != (n, self.num_frames):
            raise StoreError(f"mask shape {mask.shape} != ({n}, {self.num_frames})")
        start = self.end
        self._pooled.write(start, pooled.astype(np.float16))
        self._frames.write(start, frames.astype(np.float16))
        self._mask.write(start, mask.astype(np.uint8))
        self.end = start + n
        return np.arange(start, self.end, dtype=np.int64)

    def flush(self) -> None:
        """Push written rows to the files; call before committing them in the catalog."""
        for arr in (self._pooled, self._frames, self._mask):
            arr.flush()

    def mark_committed(self, rows: int) -> None:
        """The catalog has committed rows up to ``rows``."""
        self.rows = rows
        self.end = max(self.end, rows)

    def _check(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise StoreError(f"row out of range [0, {self.rows}) in {self.folder}")
        return rows

    def pooled(self, rows: np.ndarray) -> np.ndarray:
        """Pooled features of ``rows``: float16 [n, D]."""
        return self._pooled.read(self._check(rows))

    def frames(self, rows: np.ndarray) -> np.ndarray:
        """Per-frame features of ``rows``: float16 [n, Nf, D]."""
        return self._frames.read(self._check(rows))

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """Frame masks of ``rows``: bool [n, Nf]."""
        return self._mask.read(self._check(rows)).astype(bool)

    def pooled_range(self, start: int, stop: int) -> np.ndarray:
        """Committed pooled rows ``[start, stop)`` as a float16 [n, D] view-backed array."""
        stop = min(stop, self.rows)
        return self._pooled.read(slice(start, stop))

    def mask_u8(self, rows: np.ndarray) -> np.ndarray:
        """Frame masks of ``rows`` as stored: uint8 [n, Nf] (0/1)."""
        return self._mask.read(self._check(rows))


def _layout(dim: int, num_frames: int) -> dict[str, object]:
    return {"dim": int(dim), "num_frames": int(num_frames), "dtype": "float16"}


def write_store(
    folder: str | Path,
    dim: int,
    num_frames: int,
    chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> int:
    """Create the store ``folder`` holding exactly the rows of ``chunks``, durably on disk.

    Each chunk is (pooled [n, D], frames [n, Nf, D], mask [n, Nf]). Files are written
    sequentially and sized to the rows (no growth slack), then fsynced together with the folder
    and its parent, so a catalog transaction that names ``folder`` afterwards never points at
    data a crash (even a power loss) could lose. ``folder`` must not exist. Returns the row count.
    """
    folder = Path(folder)
    folder.mkdir()
    rows = 0
    with (
        open(folder / POOLED_FILE, "xb") as pooled_f,
        open(folder / FRAMES_FILE, "xb") as frames_f,
        open(folder / MASK_FILE, "xb") as mask_f,
    ):
        for pooled, frames, mask in chunks:
            n = len(pooled)
            if (
                pooled.shape != (n, dim)
                or frames.shape != (n, num_frames, dim)
                or mask.shape != (n, num_frames)
            ):
                raise StoreError(
                    f"chunk shapes pooled {pooled.shape} / frames {frames.shape} / mask "
                    f"{mask.shape} do not match the layout D={dim}, Nf={num_frames}"
                )
            # Row-major bytes of each array are exactly the memory-mapped layout FeatureStore
            # reads back.
            pooled_f.write(np.ascontiguousarray(pooled, dtype=np.float16).tobytes())
            frames_f.write(np.ascontiguousarray(frames, dtype=np.float16).tobytes())
            mask_f.write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
            rows += n
        for f in (pooled_f, frames_f, mask_f):
            f.flush()
            os.fsync(f.fileno())
    with open(folder / LAYOUT_FILE, "x") as f:
        f.write(json.dumps(_layout(dim, num_frames)))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder)
    fsync_dir(folder.parent)
    return rows


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (created or removed files) durable; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; its file system journals entries anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
