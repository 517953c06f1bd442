"""The one internal form every dataset reader produces: a video file, its captions and its split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Segment:
    """A timed piece of narration: ``text`` describes seconds ``start`` to ``end`` of the video."""

    start: float
    end: float
    text: str


@dataclass
class VideoRecord:
    """One video (or one clip of it) with its captions.

    ``window`` restricts decoding to (start, end) seconds; ``None`` means the whole video.
    ``segments`` carry timed narration (YouCook2, ActivityNet, DiDeMo moments, long synthetic
    videos); ``meta`` holds reader-specific extras (e.g. LSMDC's aligned times, the synthetic
    benchmark's clean caption) that no trainer depends on.
    """

    video_id: str
    path: Path
    captions: list[str]
    split: str
    window: tuple[float, float] | None = None
    segments: list[Segment] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def expand_segments(records: list[VideoRecord]) -> list[VideoRecord]:
    """One clip record per segment: its sentence as the only caption, its span as the window.

    This turns narrated long videos (YouCook2, the synthetic long set) into the clip-retrieval
    protocol VideoCLIP reports; the clip id is ``<video_id>#<k>`` and ``meta["segment"]`` is k.
    Records without segments are returned unchanged.
    """
    clips: list[VideoRecord] = []
    for record in records:
        if not record.segments:
            clips.append(record)
            continue
        for k, seg in enumerate(record.segments):
            clips.append(
                VideoRecord(
                    f"{record.video_id}#{k}",
                    record.path,
                    [seg.text],
                    record.split,
                    window=(seg.start, seg.end),
                    segments=[seg],
                    meta={**record.meta, "video_id": record.video_id, "segment": k},
                )
            )
    return clips
