"""Which indexed files came from ``vtrkit index add`` (``added.json`` in the index folder).

A build mirrors its sources, but a file added from elsewhere with ``index add`` is not among them;
without this record a later ``index build FOLDER`` would drop it as removed. The build keeps the
recorded files that still exist (and says so), and ``--prune`` drops them. Written atomically; a
missing or unreadable file reads as empty (nothing is kept, as before this record existed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

ADDED_FILE = "added.json"


def read_added(folder: str | Path) -> list[str]:
    """Paths recorded as added with ``index add`` (sorted, as stored in the catalog)."""
    path = Path(folder) / ADDED_FILE
    if not path.is_file():
        return []
    try:
        return sorted(str(p) for p in json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []


def write_added(folder: str | Path, paths: Iterable[str]) -> None:
    """Make ``paths`` the recorded set (the file is removed when it is empty)."""
    target = Path(folder) / ADDED_FILE
    entries = sorted(set(paths))
    if not entries:
        target.unlink(missing_ok=True)
        return
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    os.replace(tmp, target)


def record_added(folder: str | Path, paths: Iterable[str]) -> None:
    """Add ``paths`` to the recorded set."""
    write_added(folder, [*read_added(folder), *paths])
