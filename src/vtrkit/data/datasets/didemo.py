"""DiDeMo (Distinct Describable Moments) as a paragraph-to-video retrieval task.

Files under ``root``: ``train_data.json``, ``val_data.json``, ``test_data.json``, each a list of
``{"video": ..., "description": ..., "times": [[first_chunk, last_chunk], ...]}`` with one entry
per described moment and one ``times`` pair per annotator (chunks are 5 s long). Following
CLIP4Clip, every description of a video is joined with a space (in file order) into one
paragraph caption and the video is decoded over the window 0-31 s (videos were truncated to 30 s
for annotation). Each moment is kept as a :class:`Segment` with the annotators' mean times.
"""

from __future__ import annotations

import math
from pathlib import Path

from vtrkit.data.datasets.files import (
    attach_videos,
    expect_type,
    read_json,
    require_rows,
    unknown_split,
    warn_bad_row,
)
from vtrkit.data.records import Segment, VideoRecord

SPLITS = ("train", "val", "test")
WINDOW = (0.0, 31.0)
CHUNK_SECONDS = 5.0


def moment_seconds(times: list) -> tuple[float, float]:
    """Mean annotator moment in seconds: chunk i covers [5i, 5i+5)."""
    starts = [float(t[0]) for t in times]
    ends = [float(t[1]) for t in times]
    start = sum(starts) / len(starts) * CHUNK_SECONDS
    end = (sum(ends) / len(ends) + 1) * CHUNK_SECONDS
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise ValueError(f"times {times} do not describe a moment")
    return start, end


def read_didemo(root: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """One record per video: a paragraph caption, window (0, 31) and one segment per moment."""
    if split not in SPLITS:
        raise unknown_split(split, SPLITS, "DiDeMo")
    root = Path(root)
    video_dir = Path(video_dir) if video_dir is not None else root / "videos"
    path = root / f"{split}_data.json"
    entries = expect_type(read_json(path, f"DiDeMo {split}"), list, path, "the top level")
    texts: dict[str, list[str]] = {}
    segments: dict[str, list[Segment]] = {}
    for i, item in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(item, dict):
            warn_bad_row(path, where, "not an object")
            continue
        video, text, times = item.get("video"), item.get("description"), item.get("times")
        if not isinstance(video, str) or not isinstance(text, str) or not text.strip():
            warn_bad_row(path, where, "needs a string 'video' and 'description'")
            continue
        try:
            if not isinstance(times, list) or not times:
                raise ValueError("'times' must be a non-empty list of [start, end] chunk pairs")
            start, end = moment_seconds(times)
        except (ValueError, TypeError, IndexError) as exc:
            warn_bad_row(path, where, str(exc))
            continue
        texts.setdefault(video, []).append(text.strip())
        segments.setdefault(video, []).append(Segment(start, end, text.strip()))
    pending = []
    for video, parts in texts.items():
        record = VideoRecord(
            video, Path(), [" ".join(parts)], split, window=WINDOW, segments=segments[video]
        )
        pending.append((record, [video, Path(video).stem]))
    require_rows(len(pending), path, split)
    return attach_videos(pending, video_dir, path)
