"""A disk cache of decoded, resized uint8 frames, so each video is decoded once across epochs.

Training on small frames is bounded by decoding, not by the model (DESIGN.md), so the decoded
frames of each (video, sampling) pair are stored as ``.npy`` files. The key covers the file's
absolute path, modification time and size plus every sampling parameter: editing or replacing a
video, or changing the :class:`~vtrkit.data.sampling.FrameSampling` or the window, simply misses
the cache. Writes go to a temporary file that is renamed into place, so concurrent DataLoader
workers and killed runs never leave a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from vtrkit.data.sampling import FrameSampling, Window

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bumped whenever the stored layout or the decoder's sampling changes meaning."""


def _atomic_save(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FrameCache:
    """Frames of ``read_sampled_frames`` stored under ``root`` (created on first write).

    Each entry is two files in a two-character fan-out folder: ``<key>.npy`` (uint8
    [n, S, S, 3]) and ``<key>.ts.npy`` (float64 [n] timestamps in seconds). The timestamps are
    written first, so a present frames file means a complete entry.
    """

    def __init__(self, root: Path | str, memory_bytes: int = 0) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self.memory_bytes = memory_bytes
        """Entries kept in this process's memory after their first load, up to this many bytes
        (0: none). Later epochs then skip the key's ``stat`` and both ``np.load`` calls: for
        the demo's 48-px, 8-frame clips that was 0.06 s of a 0.45-s training step."""
        self._memory: dict[tuple[str, FrameSampling, Window | None], tuple[np.ndarray, ...]] = {}
        self._memory_used = 0

    def key(self, path: Path, sampling: FrameSampling, window: Window | None) -> str:
        """Hex digest identifying the file's current contents and the sampling parameters.

        The hashed fields (``num_frames``, ``fps``, ``window``, ``size``) are those of the
        entries already on disk, so existing caches keep hitting."""
        path = Path(path).resolve()
        stat = path.stat()
        identity = {
            "v": CACHE_VERSION,
            "path": str(path),
            "mtime_ns": stat.st_mtime_ns,
            "bytes": stat.st_size,
            "num_frames": sampling.num_frames,
            "fps": sampling.fps,
            "window": None if window is None else [float(window[0]), float(window[1])],
            "size": sampling.image_size,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def _files(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.ts.npy"

    def get(
        self, path: Path, sampling: FrameSampling, window: Window | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Cached (frames uint8 [n,S,S,3], timestamps float64 [n]) or None on a miss."""
        frames_file, ts_file = self._files(self.key(path, sampling, window))
        if not frames_file.is_file():
            return None
        try:
            frames = np.load(frames_file, allow_pickle=False)
            stamps = np.load(ts_file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            # A damaged entry (e.g. a disk that filled up) is dropped and decoded again.
            logger.warning(
                "frame cache entry %s for %s is unreadable (%s); re-decoding",
                frames_file,
                path,
                exc,
            )
            frames_file.unlink(missing_ok=True)
            return None
        return frames, stamps

    def put(
        self,
        path: Path,
        sampling: FrameSampling,
        window: Window | None,
        frames: np.ndarray,
        timestamps: np.ndarray,
    ) -> None:
        """Store uint8 frames [n,S,S,3] and their timestamps [n] for this video and sampling."""
        frames = np.ascontiguousarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"frame cache stores uint8 [n,S,S,3] frames, got "
                f"{frames.dtype} {tuple(frames.shape)} for {path}"
            )
        frames_file, ts_file = self._files(self.key(path, sampling, window))
        frames_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(ts_file, np.asarray(timestamps, dtype=np.float64))
        _atomic_save(frames_file, frames)

    def load(
        self, path: Path, sampling: FrameSampling, window: Window | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [n,S,S,3] and timestamps [n], from the cache or decoded and stored.

        Raises ``VideoDecodeError`` (from the decoder) when the video cannot be decoded;
        failures are not cached, so a repaired file is picked up on the next call. An entry
        already held in memory (``memory_bytes``) is returned without looking at the disk, so
        callers must not write into the returned arrays.
        """
        memo_key = (str(path), sampling, None if window is None else tuple(window))
        remembered = self._memory.get(memo_key)
        if remembered is not None:
            self.hits += 1
            return remembered[0], remembered[1]
        cached = self.get(path, sampling, window)
        if cached is not None:
            self.hits += 1
            frames, stamps = cached
        else:
            from vtrkit.data import decode  # attribute lookup at call time keeps it patchable

            frames, stamps, _ = decode.read_sampled_frames(path, sampling, window)
            frames = np.asarray(frames, dtype=np.uint8)
            stamps = np.asarray(stamps, dtype=np.float64)
            self.misses += 1
            self.put(path, sampling, window, frames, stamps)
        size = frames.nbytes + stamps.nbytes
        if self._memory_used + size <= self.memory_bytes:
            self._memory[memo_key] = (frames, stamps)
            self._memory_used += size
        return frames, stamps
