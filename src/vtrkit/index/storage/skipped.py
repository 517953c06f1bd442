"""Files a build or add found but could not even try to index, kept beside the catalog.

Discovery (:mod:`vtrkit.index.build.discovery`) skips what is not a video file it can hand to the
decoder: a folder named like a video, a dangling symlink, a symlink loop, a FIFO, a name that is
not valid UTF-8 (the catalog stores paths as text). Such entries have no catalog row (a catalog
row is a file that was tried), so they are listed in ``skipped.json`` in the index folder, with
the reason, for ``vtrkit index status``. A build mirrors its sources and replaces the list; an add
merges into it. The file is written atomically (temporary file + rename), and a missing or
unreadable one reads as an empty list: it is a report, never needed to search.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.json"


@dataclass(frozen=True)
class Skipped:
    """A path that was not indexed before any decoding was tried, and why.

    ``path`` is printable text: bytes of a name that are not valid UTF-8 are written ``\\xNN``.
    """

    path: str
    reason: str


def read_skipped(folder: str | Path) -> list[Skipped]:
    """The skipped files recorded in the index ``folder`` (empty when none were recorded)."""
    path = Path(folder) / SKIPPED_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return [Skipped(str(e["path"]), str(e["reason"])) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []


def record_skipped(
    folder: str | Path,
    found: Iterable[Skipped],
    replace: bool,
    indexed: Iterable[str] = (),
) -> list[Skipped]:
    """Record ``found`` in the index ``folder`` and return the full list now recorded.

    ``replace=True`` (a build) makes ``found`` the whole list; otherwise (an add) entries for the
    same paths are replaced and the others kept. Earlier entries whose path is in ``indexed`` (now
    in the catalog) are dropped either way.
    """
    folder = Path(folder)
    done = set(indexed)
    merged: dict[str, Skipped] = {}
    if not replace:
        merged = {s.path: s for s in read_skipped(folder) if s.path not in done}
    for entry in found:
        merged[entry.path] = entry
    entries = sorted(merged.values(), key=lambda s: s.path)
    target = folder / SKIPPED_FILE
    if not entries and not target.exists():
        return []
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps([asdict(e) for e in entries], indent=1), encoding="utf-8")
    os.replace(tmp, target)
    return entries
