"""DiDeMo (Distinct Describable Moments) as a paragraph-to-video retrieval task.

Files under ``root``: ``train_data.json``, ``val_data.json``, ``test_data.json``, each a list of
``{"video": ..., "description": ..., "times": [[first_chunk, last_chunk], ...]}`` with one entry
per described moment and one ``times`` pair per annotator (chunks are 5 s long). Following
CLIP4Clip, every description of a video is joined with a space (in file order) into one
paragraph caption and the video is decoded over the window 0-31 s (videos were truncated to 30 s
for annotation). Each moment is kept as a :class:`Segment` with the annotators' mean times.

As downloaded, ids are the original file names and keep their extension (``.mov``, ``.mpg``,
``.3gp``, ``.wmv``, ``.3g2``, ``.mts``, ``.m2ts``, ``.avi``, even a bare trailing ``.``); videos
are found named exactly by the id anywhere under ``video_dir`` (CLIP4Clip's layout) or re-encoded
with the extension replaced (``X.mpg`` -> ``X.mp4``, ``X.`` -> ``X.mp4``) or appended.

The JSON files hold more ids than the published splits (test 1,037 against 1,004, val 1,094
against 1,065): the extras are the same video under a second extension. When the published
``{split}_list.txt`` (one id per line, as CLIP4Clip ships them) is under ``root``, only its ids
are used, in its order, and the extras are reported. Without it, ids equal up to their extension
count as one video (the first in the file is kept, the others reported), and any two ids that
find the same file make one gallery entry.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from vtrkit.data.datasets.files import (
    ORIGINAL_EXTENSIONS,
    VIDEO_EXTENSIONS,
    attach_videos,
    expect_type,
    read_json,
    read_text,
    require_rows,
    unknown_split,
    warn_bad_row,
)
from vtrkit.data.datasets.video_folder import split_container_extension
from vtrkit.data.records import Segment, VideoRecord

logger = logging.getLogger(__name__)

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


def video_stem(video: str) -> str:
    """An id without its container extension (or bare trailing ``.``): one video's key."""
    known = frozenset(VIDEO_EXTENSIONS) | frozenset(ORIGINAL_EXTENSIONS)
    return split_container_extension(video, known) or video


def _read_moments(path: Path) -> tuple[dict[str, list[str]], dict[str, list[Segment]]]:
    """Descriptions and moments per id, in file order."""
    entries = expect_type(read_json(path, f"DiDeMo {path.stem}"), list, path, "the top level")
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
    return texts, segments


def _listed_ids(root: Path, split: str, ids: list[str], path: Path) -> list[str]:
    """The ids of the published split list when present, else one id per video stem."""
    list_file = root / f"{split}_list.txt"
    if not list_file.is_file():
        first: dict[str, str] = {}
        extras = []
        for video in ids:
            key = video_stem(video)
            if key in first:
                extras.append(f"{video} (as {first[key]})")
            else:
                first[key] = video
        if extras:
            logger.warning(
                "%s: %d ids repeat a video under another extension and are left out so each "
                "video is one gallery entry (e.g. %s); put the published %s beside it to "
                "choose them as CLIP4Clip does",
                path,
                len(extras),
                ", ".join(extras[:3]),
                list_file.name,
            )
        return list(first.values())
    lines = read_text(list_file, "DiDeMo split list").splitlines()
    listed = list(dict.fromkeys(line.strip() for line in lines))
    listed = [v for v in listed if v]
    in_json = set(ids)
    known = set(listed)
    extras = [v for v in ids if v not in known]
    if extras:
        stems = {video_stem(v) for v in listed}
        same = sum(video_stem(v) in stems for v in extras)
        logger.warning(
            "%s holds %d ids beyond the %d of %s, left out as in the published protocol; %d "
            "of them are a listed video under another extension (e.g. %s)",
            path,
            len(extras),
            len(listed),
            list_file,
            same,
            ", ".join(extras[:3]),
        )
    absent = [v for v in listed if v not in in_json]
    if absent:
        logger.warning(
            "%s: %d listed ids have no description in %s (e.g. %s)",
            list_file,
            len(absent),
            path.name,
            ", ".join(absent[:3]),
        )
    return [v for v in listed if v in in_json]


def read_didemo(root: Path, split: str, video_dir: Path | None = None) -> list[VideoRecord]:
    """One record per video: a paragraph caption, window (0, 31) and one segment per moment."""
    if split not in SPLITS:
        raise unknown_split(split, SPLITS, "DiDeMo")
    root = Path(root)
    video_dir = Path(video_dir) if video_dir is not None else root / "videos"
    path = root / f"{split}_data.json"
    texts, segments = _read_moments(path)
    pending = []
    for video in _listed_ids(root, split, list(texts), path):
        record = VideoRecord(
            video, Path(), [" ".join(texts[video])], split, window=WINDOW, segments=segments[video]
        )
        pending.append((record, [video]))
    require_rows(len(pending), path, split)
    records = attach_videos(pending, video_dir, path)
    logger.info("DiDeMo %s: %d videos from %d ids in %s", split, len(records), len(texts), path)
    return records
