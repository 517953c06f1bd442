"""What a search returns: window hits, video hits grouped from them, caption matches; the
checks every search applies to its arguments.

Scores: ``"cosine"`` scores are cosines of pooled features, in [-1, 1]; ``"head"`` scores come
from the model's re-ranking head (X-CLIP's multi-grained score and CLIP4Clip's include the logit
scale λ, about 100 for a trained model, so they are not comparable with cosines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vtrkit.inference import Encoder

MAX_QUERY_CHARS = 1000
MAX_MOMENTS = 8
"""Other matching windows listed under a video's best one."""


@dataclass(frozen=True)
class SearchResult:
    """One hit: a window of a video. ``score`` is cosine for ANN order, the head's score when
    re-ranked."""

    rank: int
    score: float
    path: Path
    start: float
    end: float
    video_id: int
    window_id: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class Moment:
    """A matching window of a video: its span in seconds, score and window id."""

    start: float
    end: float
    score: float
    window_id: int


@dataclass(frozen=True)
class VideoHit:
    """One video in grouped results: its best window (``start``, ``end``, ``window_id``,
    ``score``) and its other matching windows, best first.

    ``scored_by`` says what ``score`` is: ``"cosine"`` (pooled features, in [-1, 1]) or
    ``"head"`` (the model's re-ranking head; X-CLIP's includes the logit scale λ)."""

    rank: int
    score: float
    path: Path
    video_id: int
    start: float
    end: float
    window_id: int
    moments: tuple[Moment, ...] = ()
    scored_by: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["moments"] = [asdict(m) for m in self.moments]
        return data


def has_fine_grained_head(encoder: Encoder) -> bool:
    """Whether re-ranking with ``encoder.rerank_scores`` can change the cosine order: True for
    X-CLIP (multi-grained head) and CLIP2TV with its matching head, False for CLIP4Clip (its
    score is λ·cosine) and CLIP2TV without one. An encoder may say so itself with a boolean
    ``fine_grained`` attribute; a custom encoder without one is taken at its word (it has a
    ``rerank_scores`` of its own)."""
    flag = getattr(encoder, "fine_grained", None)
    if flag is not None:
        return bool(flag)
    model = getattr(encoder, "model", None)
    if model is None:
        return True
    return getattr(model, "head", None) is not None or getattr(model, "fusion", None) is not None


@dataclass(frozen=True)
class CaptionMatch:
    """One caption scored against a video: the best window and its score."""

    rank: int
    score: float
    caption: str
    start: float
    end: float


def check_query(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the query is empty; give some words to search for")
    text = text.strip()
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(
            f"the query has {len(text)} characters; at most {MAX_QUERY_CHARS} are accepted"
        )
    return text


def check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive number of results, got {k!r}")


def check_rerank(rerank: int | None) -> None:
    if rerank is not None and (not isinstance(rerank, int) or rerank < 0):
        raise ValueError(
            f"rerank must be a number of candidates (0 turns re-ranking off), got {rerank!r}"
        )


def group_by_video(windows: Sequence[SearchResult], k: int, scored_by: str) -> list[VideoHit]:
    """The ``k`` best videos of window results (best first, all on one scale), one
    :class:`VideoHit` each in the order of its best window.

    A video's other windows become its ``moments`` (best first, at most :data:`MAX_MOMENTS`)
    when they score at least as well as the last video shown: each would have made the list on
    its own, so a moment is never a worse match than a result."""
    groups: dict[int, list[SearchResult]] = {}
    for w in windows:
        groups.setdefault(w.video_id, []).append(w)
    top = list(groups.items())[:k]
    if not top:
        return []
    floor = top[-1][1][0].score
    hits = []
    for rank, (video_id, found) in enumerate(top, 1):
        best = found[0]
        others = [w for w in found[1:] if w.score >= floor][:MAX_MOMENTS]
        moments = tuple(Moment(w.start, w.end, w.score, w.window_id) for w in others)
        hits.append(
            VideoHit(
                rank=rank,
                score=best.score,
                path=best.path,
                video_id=video_id,
                start=best.start,
                end=best.end,
                window_id=best.window_id,
                moments=moments,
                scored_by=scored_by,
            )
        )
    return hits


def format_time(seconds: float) -> str:
    """Player-style time: ``0:04``, ``1:02:03``; tenths when not whole (``0:01.5``)."""
    tenths = round(seconds * 10)
    whole, tenth = divmod(tenths, 10)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{text}.{tenth}" if tenth else text


def describe_scores(scored_by: str, rerank: int) -> str:
    """One line saying what the scores of a result list are."""
    if scored_by == "head":
        return (
            f"scores: the model's own head, re-ranking the {rerank} best windows by cosine; not "
            "cosines (X-CLIP's include the logit scale, up to about 100): compare within a query"
        )
    return "scores: cosine similarity of the pooled video and text features (-1 to 1)"
