"""One writer at a time: an advisory lock on ``write.lock`` in the index folder.

Writers (build, add, compact) append feature rows at the end of the store and compaction rewrites
the store into a new folder, so two at once would overwrite each other's rows or renumber rows
under a build. Each holds this lock for the whole operation. It is an OS lock (``flock`` /
``msvcrt.locking``) on an open file, so the kernel releases it when the process dies: a killed
writer never leaves a stale lock behind. Readers (search, serve) never take it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vtrkit.index.storage.catalog import CatalogError

LOCK_FILE = "write.lock"


class IndexBusyError(CatalogError):
    """Another process (or another open index in this one) is writing to the index."""


@contextmanager
def writer_lock(folder: str | Path) -> Iterator[None]:
    """Hold the index's writer lock, or raise :class:`IndexBusyError` at once if it is held."""
    path = Path(folder) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise IndexBusyError(
                f"another process is writing to the index {folder} (vtrkit index build, add or "
                "compact); wait for it to finish and try again"
            )
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
