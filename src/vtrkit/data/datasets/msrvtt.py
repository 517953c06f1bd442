"""MSR-VTT in the CLIP4Clip layout: the 9k training split and the 1k-A ("JSFusion") test split.

Files under ``root``: ``MSRVTT_data.json`` (``videos[].video_id``, ``sentences[].video_id`` and
``.caption``), ``MSRVTT_train.9k.csv`` (a ``video_id`` column) and ``MSRVTT_JSFUSION_test.csv``
(columns ``key, vid_key, video_id, sentence``; one caption per test video). Training uses every
caption of every training video; the test split uses only the sentence in the CSV, as published.
The synthetic benchmark is written in this layout too.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vtrkit.data.datasets.files import (
    AnnotationError,
    attach_videos,
    expect_type,
    read_json,
    read_text,
    require_rows,
    unknown_split,
    warn_bad_row,
)
from vtrkit.data.records import VideoRecord

DATA_JSON = "MSRVTT_data.json"
TRAIN_CSV = "MSRVTT_train.9k.csv"
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
SPLITS = ("train", "test")


def _csv_rows(path: Path, required: tuple[str, ...], what: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header that must contain ``required`` columns."""
    reader = csv.DictReader(io.StringIO(read_text(path, what)))
    header = [h.strip() for h in (reader.fieldnames or [])]
    absent = [c for c in required if c not in header]
    if absent:
        raise AnnotationError(
            f"{path}: header must contain column(s) {', '.join(absent)} (found {header})"
        )
    reader.fieldnames = header
    return [(reader.line_num, row) for row in reader]


def _captions_by_video(path: Path) -> dict[str, list[str]]:
    data = expect_type(read_json(path, "MSR-VTT captions"), dict, path, "the top level")
    sentences = expect_type(data.get("sentences"), list, path, "'sentences'")
    captions: dict[str, list[str]] = {}
    for i, item in enumerate(sentences):
        vid = item.get("video_id") if isinstance(item, dict) else None
        text = item.get("caption") if isinstance(item, dict) else None
        if not isinstance(vid, str) or not isinstance(text, str) or not text.strip():
            warn_bad_row(path, f"sentences[{i}]", "needs a string 'video_id' and 'caption'")
            continue
        captions.setdefault(vid, []).append(text.strip())
    return captions


def read_msrvtt(root: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """Records of the ``train`` (9k, all captions) or ``test`` (1k-A, one caption) split.

    Videos are ``video_dir/<video_id>.mp4`` (or another common extension); ``video_dir``
    defaults to ``root/videos``.
    """
    root = Path(root)
    video_dir = Path(video_dir) if video_dir is not None else root / "videos"
    if split == "train":
        split_file = root / TRAIN_CSV
        rows = _csv_rows(split_file, ("video_id",), "MSR-VTT 9k training list")
        captions = _captions_by_video(root / DATA_JSON)
        pending = []
        seen: set[str] = set()
        for line, row in rows:
            vid = (row.get("video_id") or "").strip()
            if not vid:
                warn_bad_row(split_file, line, "empty video_id")
                continue
            if vid in seen:
                continue
            seen.add(vid)
            if vid not in captions:
                warn_bad_row(split_file, line, f"{vid} has no caption in {DATA_JSON}")
                continue
            record = VideoRecord(vid, Path(), captions[vid], "train")
            pending.append((record, [vid]))
    elif split == "test":
        split_file = root / TEST_CSV
        rows = _csv_rows(split_file, ("video_id", "sentence"), "MSR-VTT 1k-A test list")
        pending = []
        by_id: dict[str, VideoRecord] = {}
        for line, row in rows:
            vid = (row.get("video_id") or "").strip()
            sentence = (row.get("sentence") or "").strip()
            if not vid or not sentence:
                warn_bad_row(split_file, line, "needs a video_id and a sentence")
                continue
            if vid in by_id:  # a repeated video gains a caption rather than a duplicate entry
                by_id[vid].captions.append(sentence)
                continue
            by_id[vid] = VideoRecord(vid, Path(), [sentence], "test")
            pending.append((by_id[vid], [vid]))
    else:
        raise unknown_split(split, SPLITS, "MSR-VTT")
    require_rows(len(pending), split_file, split)
    return attach_videos(pending, video_dir, split_file)
