"""LSMDC (Large Scale Movie Description Challenge, 2016 release as used by CLIP4Clip).

Tab-separated files under ``root``, no header, six columns: ``clip_id, start_aligned,
end_aligned, start_extracted, end_extracted, sentence``. Splits: ``train`` ->
``LSMDC16_annos_training.csv``, ``val`` -> ``LSMDC16_annos_val.csv``, ``test`` ->
``LSMDC16_challenge_1000_publictect.csv`` (the 1,000-clip public test; "publictect" is the
file's real name). The clips are already cut, so no window is applied; the four time columns
are kept in ``meta``.

Video layout: the LSMDC download unpacks clips into one folder per movie, e.g.
``avi/0001_American_Beauty/0001_American_Beauty_00.00.51.926-00.00.54.154.avi``: the movie folder
is the clip id without its last ``_``-separated part (the ``HH.MM.SS.mmm-HH.MM.SS.mmm`` time
span). ``video_dir`` (default ``root/videos``) is that ``avi`` folder; a flat folder with every
clip directly inside is accepted as well.
"""

from __future__ import annotations

from pathlib import Path

from vtrkit.data.datasets.files import (
    attach_videos,
    read_text,
    require_rows,
    unknown_split,
    warn_bad_row,
)
from vtrkit.data.records import VideoRecord

SPLIT_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
TIME_COLUMNS = ("start_aligned", "end_aligned", "start_extracted", "end_extracted")


def movie_of_clip(clip_id: str) -> str:
    """The per-movie folder of a clip: the clip id without its trailing ``_<time span>``."""
    return clip_id.rsplit("_", 1)[0] if "_" in clip_id else clip_id


def read_lsmdc(root: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """Records of one split; a clip listed on several rows becomes one multi-caption record."""
    if split not in SPLIT_FILES:
        raise unknown_split(split, SPLIT_FILES, "LSMDC")
    root = Path(root)
    video_dir = Path(video_dir) if video_dir is not None else root / "videos"
    path = root / SPLIT_FILES[split]
    by_clip: dict[str, VideoRecord] = {}
    pending = []
    for line, raw in enumerate(read_text(path, f"LSMDC {split} annotations").splitlines(), 1):
        if not raw.strip():
            continue
        cols = raw.rstrip("\r\n").split("\t")
        if len(cols) < 6:
            warn_bad_row(path, line, f"expected 6 tab-separated columns, found {len(cols)}")
            continue
        clip_id = cols[0].strip()
        # A stray tab inside a sentence must not cut it short.
        sentence = "\t".join(cols[5:]).strip()
        if not clip_id or not sentence:
            warn_bad_row(path, line, "empty clip id or sentence")
            continue
        if clip_id in by_clip:
            by_clip[clip_id].captions.append(sentence)
            continue
        meta = dict(zip(TIME_COLUMNS, (c.strip() for c in cols[1:5]), strict=True))
        record = VideoRecord(clip_id, Path(), [sentence], split, meta=meta)
        by_clip[clip_id] = record
        pending.append((record, [f"{movie_of_clip(clip_id)}/{clip_id}", clip_id]))
    require_rows(len(pending), path, split)
    return attach_videos(pending, video_dir, path)
