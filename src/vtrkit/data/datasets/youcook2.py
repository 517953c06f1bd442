"""YouCook2: long cooking videos with timed narration, used by VideoCLIP.

One file under ``root``: ``youcookii_annotations_trainval.json``, shaped
``{"database": {video_id: {"duration": s, "subset": "training" | "validation",
"recipe_type": ..., "annotations": [{"segment": [start, end], "sentence": ..., "id": k}]}}}``.
Splits: ``train`` -> "training", ``val`` and ``test`` -> "validation" (the test annotations were
never released; published numbers use validation). A record is a whole video with one
:class:`Segment` per annotation and the segment sentences as its captions;
:func:`vtrkit.data.records.expand_segments` turns it into per-segment clips (windows) for the
clip-retrieval protocol. Videos are ``video_dir/<id>.<ext>`` or, as in the official download,
``video_dir/<subset>/<recipe_type>/<id>.<ext>``. The synthetic long set uses this layout.
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

ANNOTATIONS = "youcookii_annotations_trainval.json"
SUBSETS = {"train": "training", "val": "validation", "test": "validation"}


def _segments(item: dict) -> list[Segment]:
    annotations = item.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        raise ValueError("'annotations' must be a non-empty list")
    segments = []
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ValueError(f"annotations[{k}] is not an object")
        span, text = ann.get("segment"), ann.get("sentence")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"annotations[{k}] has no 'sentence'")
        if not isinstance(span, list) or len(span) != 2:
            raise ValueError(f"annotations[{k}].segment must be [start, end]")
        start, end = float(span[0]), float(span[1])
        if end < start:
            raise ValueError(f"annotations[{k}].segment ends before it starts: {span}")
        segments.append(Segment(start, end, text.strip()))
    return segments


def read_youcook2(root: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """Whole-video records of one split, each with its timed segments."""
    if split not in SUBSETS:
        raise unknown_split(split, SUBSETS, "YouCook2")
    root = Path(root)
    video_dir = Path(video_dir) if video_dir is not None else root / "videos"
    path = root / ANNOTATIONS
    data = expect_type(read_json(path, "YouCook2 annotations"), dict, path, "the top level")
    database = expect_type(data.get("database"), dict, path, "'database'")
    subset = SUBSETS[split]
    pending = []
    for vid, item in database.items():
        if not isinstance(item, dict):
            warn_bad_row(path, f"database[{vid!r}]", "not an object")
            continue
        if item.get("subset") != subset:
            continue
        try:
            segments = _segments(item)
        except (ValueError, TypeError) as exc:
            warn_bad_row(path, f"database[{vid!r}]", str(exc))
            continue
        meta = {"duration": item.get("duration"), "recipe_type": item.get("recipe_type")}
        record = VideoRecord(
            vid, Path(), [s.text for s in segments], split, segments=segments, meta=meta
        )
        names = [vid, f"{subset}/{item.get('recipe_type')}/{vid}"]
        pending.append((record, names))
    require_rows(len(pending), path, split)
    return attach_videos(pending, video_dir, path)
