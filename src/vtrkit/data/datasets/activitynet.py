"""ActivityNet Captions as paragraph-to-video retrieval over whole videos.

Files under ``root``: ``train.json`` and ``val_1.json`` (and optionally ``val_2.json``), each
``{video_id: {"duration": s, "timestamps": [[start, end], ...], "sentences": [...]}}`` with
ids carrying a ``v_`` prefix. As in CLIP4Clip the sentences of a video are joined with a space
into one paragraph and the whole video is decoded; the published protocol evaluates on
``val_1``, so both ``val`` and ``test`` read it (``val_2`` is available by name). Videos are
``video_dir/v_<id>.mp4``; copies saved without the ``v_`` prefix are found as well.
"""

from __future__ import annotations

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

SPLIT_FILES = {
    "train": "train.json",
    "val": "val_1.json",
    "test": "val_1.json",
    "val_1": "val_1.json",
    "val_2": "val_2.json",
}


def _segments(item: dict) -> list[Segment]:
    stamps, sentences = item.get("timestamps"), item.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise ValueError("'sentences' must be a non-empty list")
    if not all(isinstance(s, str) for s in sentences):
        raise ValueError("every sentence must be a string")
    if not isinstance(stamps, list) or len(stamps) != len(sentences):
        raise ValueError("'timestamps' must hold one [start, end] pair per sentence")
    return [
        Segment(float(a), float(b), s.strip()) for (a, b), s in zip(stamps, sentences, strict=True)
    ]


def read_activitynet(root: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """One record per video: a paragraph caption, no window, and one segment per sentence."""
    if split not in SPLIT_FILES:
        raise unknown_split(split, SPLIT_FILES, "ActivityNet Captions")
    root = Path(root)
    video_dir = Path(video_dir) if video_dir is not None else root / "videos"
    path = root / SPLIT_FILES[split]
    data = expect_type(read_json(path, f"ActivityNet {split}"), dict, path, "the top level")
    pending = []
    for vid, item in data.items():
        try:
            if not isinstance(item, dict):
                raise ValueError("not an object")
            segments = _segments(item)
        except (ValueError, TypeError) as exc:
            warn_bad_row(path, f"entry {vid!r}", str(exc))
            continue
        paragraph = " ".join(s.text for s in segments if s.text)
        meta = {"duration": item.get("duration")}
        record = VideoRecord(vid, Path(), [paragraph], split, segments=segments, meta=meta)
        bare = vid[2:] if vid.startswith("v_") else vid
        pending.append((record, [vid, bare] if bare != vid else [vid, f"v_{vid}"]))
    require_rows(len(pending), path, split)
    return attach_videos(pending, video_dir, path)
