"""A user's own captions: CSV (header) or JSONL rows of ``video, caption[, start, end][, split]``.

``video`` is a path, absolute or relative to ``video_dir`` (default: the annotation file's
folder), or a file name found anywhere below that folder; the extension may be left out. ``start``/``end`` (seconds, both or neither) restrict the
caption to a clip of the video. Rows naming the same file and window become one multi-caption
record whose id is the video as first written, plus ``#start-end`` for a window. ``split`` names
the split of a row; a file with no split information at all serves every split (so evaluating on
a file of your own needs no extra column), and in a file that has splits a row lacking one is
skipped with a warning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from vtrkit.data.datasets.files import (
    AnnotationError,
    attach_videos,
    read_text,
    require_rows,
    video_folder,
    warn_bad_row,
)
from vtrkit.data.records import VideoRecord

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs; a file in neither format, or without the needed columns, fails."""
    text = read_text(path, "custom captions")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        for column in ("video", "caption"):
            if column not in header:
                raise AnnotationError(
                    f"{path}: the first line must be a header with columns video,caption"
                    f"[,start,end][,split]; '{column}' is missing (found {header})"
                )
        reader.fieldnames = header
        return [(reader.line_num, row) for row in reader]
    if suffix in JSONL_SUFFIXES:
        rows = []
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                warn_bad_row(path, line, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                warn_bad_row(path, line, "not a JSON object")
                continue
            rows.append((line, row))
        return rows
    raise AnnotationError(
        f"{path}: unknown annotation format {suffix!r}; use a .csv, .tsv or .jsonl file"
    )


def _window(row: dict[str, Any]) -> tuple[float, float] | None:
    start, end = row.get("start"), row.get("end")
    if start in (None, "") and end in (None, ""):
        return None
    if start in (None, "") or end in (None, ""):
        raise ValueError("give both start and end, or neither")
    lo, hi = float(start), float(end)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi <= lo:
        raise ValueError(f"start {start} / end {end} is not a window (need 0 <= start < end)")
    return lo, hi


def read_custom(annotation: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """Records of ``split`` from a CSV/JSONL caption file."""
    path = Path(annotation)
    base = Path(video_dir) if video_dir is not None else path.parent
    rows = _rows(path)
    has_split = any(str(row.get("split") or "").strip() for _, row in rows)
    if not has_split:
        logger.info("%s has no split column: all rows are used for split %r", path, split)
    groups: dict[tuple[str, tuple[float, float] | None], VideoRecord] = {}
    pending = []
    folder = video_folder(base)  # one walk for every row
    for line, row in rows:
        video = str(row.get("video") or "").strip()
        caption = str(row.get("caption") or "").strip()
        if not video or not caption:
            warn_bad_row(path, line, "needs a video and a caption")
            continue
        row_split = str(row.get("split") or "").strip()
        if has_split and not row_split:
            warn_bad_row(path, line, "no split, while other rows have one")
            continue
        if has_split and row_split != split:
            continue
        try:
            window = _window(row)
        except (ValueError, TypeError) as exc:
            warn_bad_row(path, line, str(exc))
            continue
        # Group by the file actually found, so "a.mp4" and "a" on two rows are one video.
        found = folder.find([video])
        key = (str(found) if found is not None else video, window)
        if key in groups:
            groups[key].captions.append(caption)
            continue
        vid = video if window is None else f"{video}#{window[0]:g}-{window[1]:g}"
        groups[key] = VideoRecord(vid, Path(), [caption], split, window=window)
        pending.append((groups[key], [video]))
    require_rows(len(pending), path, split)
    return attach_videos(pending, base, path, folder)
