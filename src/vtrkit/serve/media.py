"""What the server sends besides JSON: readable thumbnails (cached) and id checks.

The catalog's own thumbnails are made at the model's input size (48 px squares for the demo
model). The page asks for :func:`~vtrkit.index.build.thumbnails.frame_thumbnail` images instead:
the middle frame of a window decoded from the video file, at most 320 px wide at the video's
own aspect ratio. They are made on first request and kept in an LRU cache; when the file is gone
or has changed since it was indexed (the frame would not be the indexed one) the stored
thumbnail is sent instead.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import av

from vtrkit.index.build.thumbnails import frame_thumbnail
from vtrkit.index.storage.catalog import Catalog, VideoRow

log = logging.getLogger(__name__)

MAX_ID = 2**63 - 1
"""Largest id SQLite can hold: a larger number in a URL names nothing (404, not an overflow)."""


def valid_id(value: int) -> bool:
    """Whether ``value`` can be a catalog id at all (0 <= value <= MAX_ID)."""
    return 0 <= value <= MAX_ID


def unchanged_since_indexed(video: VideoRow) -> bool:
    """Whether the video's file still has the size and mtime it was indexed with."""
    try:
        st = Path(video.path).stat()
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (video.size, video.mtime_ns)


class ThumbnailCache:
    """Readable thumbnails of windows, made on demand; at most ``size`` kept (LRU).

    Entries are keyed by the window and the version of its file (path, size, mtime, span), so a
    re-encoded video, or a window id SQLite reuses after a removal, never gets an old image."""

    def __init__(self, catalog: Catalog, size: int = 2048) -> None:
        self.catalog = catalog
        self.size = size
        self._lock = threading.Lock()
        self._jpegs: OrderedDict[tuple, bytes] = OrderedDict()

    def get(self, video_id: int, window_id: int) -> bytes | None:
        """JPEG for the window ``window_id`` of video ``video_id``, or None when the catalog
        holds no such window (or it has neither a readable frame nor a stored thumbnail)."""
        video = self.catalog.video(video_id)
        if video is None or video.status == "failed":
            return None
        window = next((w for w in self.catalog.windows(video_id) if w.id == window_id), None)
        if window is None:
            return None
        key = (window_id, video.path, video.size, video.mtime_ns, window.start, window.end)
        with self._lock:
            jpeg = self._jpegs.get(key)
            if jpeg is not None:
                self._jpegs.move_to_end(key)
                return jpeg
        if not unchanged_since_indexed(video):
            return self.catalog.thumbnail(window_id)
        try:
            jpeg = frame_thumbnail(video.path, (window.start + window.end) / 2)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            log.info("no readable thumbnail of %s at %.1f s: %s", video.path, window.start, exc)
            return self.catalog.thumbnail(window_id)
        with self._lock:
            self._jpegs[key] = jpeg
            while len(self._jpegs) > self.size:
                self._jpegs.popitem(last=False)
        return jpeg
