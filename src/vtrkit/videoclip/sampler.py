"""Overlapping (video clip, text clip) positive pairs for VideoCLIP pre-training (SPEC §3).

Time is measured in whole seconds: second ``s`` is the feature row ``s`` of a video's per-second
array and covers ``[s, s + 1)``. Captions are a video's narration segments in time order.

One pair is drawn as follows.

1. Text clip: pick a caption uniformly; draw a target length uniformly from
   ``min_text_tokens..max_text_tokens`` tokens; while the span is shorter than the target and
   there is a neighbour left, append the next caption or prepend the previous one (probability 0.5
   each; forced to the only possible side at the first and last caption). The span is truncated to
   the model's text length later, when it is tokenized.
2. Centre: one second drawn uniformly among the seconds the text span touches.
3. Video clip: draw a length uniformly from ``min_video_seconds..max_video_seconds`` (capped by the
   video's length); start from the centre second and grow one second at a time, left or right with
   probability 0.5 (forced at the video's first and last second), until the length is reached.

The video clip always contains the centre, which lies inside the text span, so the pair overlaps
while its boundaries are not aligned. With ``aligned=True`` (the "no overlap" ablation) the video
clip is exactly the seconds of the text span; a span longer than ``max_video_seconds`` keeps the
``max_video_seconds`` window around the centre (documented choice: the transformer takes at most
that many tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplerSettings:
    """Bounds of the overlapping pair sampler (SPEC §3 defaults)."""

    min_text_tokens: int = 8
    max_text_tokens: int = 64
    min_video_seconds: int = 3
    max_video_seconds: int = 32
    aligned: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_text_tokens <= self.max_text_tokens:
            raise ValueError(
                f"SamplerSettings: need 1 <= min_text_tokens <= max_text_tokens, got "
                f"{self.min_text_tokens}..{self.max_text_tokens}"
            )
        if not 1 <= self.min_video_seconds <= self.max_video_seconds:
            raise ValueError(
                f"SamplerSettings: need 1 <= min_video_seconds <= max_video_seconds, got "
                f"{self.min_video_seconds}..{self.max_video_seconds}"
            )


@dataclass(frozen=True)
class ClipPair:
    """One positive pair.

    Captions ``text_first..text_last`` (inclusive) form the text; seconds
    ``video_start..video_end - 1`` form the video clip; ``centre`` is the shared second.
    """

    text_first: int
    text_last: int
    centre: int
    video_start: int
    video_end: int

    @property
    def video_seconds(self) -> int:
        return self.video_end - self.video_start


def span_seconds(start: float, end: float, n_seconds: int) -> tuple[int, int]:
    """Seconds ``[lo, hi)`` touched by the time span ``[start, end)``, clipped to the video.

    A span always touches at least one second (a zero-length caption still has a place in time).
    """
    if n_seconds < 1:
        raise ValueError("span_seconds: the video has no seconds of features")
    lo = min(max(math.floor(start), 0), n_seconds - 1)
    hi = min(max(math.ceil(end), lo + 1), n_seconds)
    return lo, hi


def grow_text_span(
    first: int, token_counts: Sequence[int], target: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Grow caption ``first`` into a span of at least ``target`` tokens (or all captions).

    Returns inclusive caption indices ``(lo, hi)``. Each step appends the next caption or prepends
    the previous one with probability 0.5; at the first (last) caption only appending (prepending)
    is possible, so the direction is forced there.
    """
    n = len(token_counts)
    if not 0 <= first < n:
        raise ValueError(f"grow_text_span: caption {first} out of range for {n} captions")
    lo = hi = first
    total = int(token_counts[first])
    while total < target and (lo > 0 or hi < n - 1):
        if lo == 0:
            append = True
        elif hi == n - 1:
            append = False
        else:
            append = bool(rng.random() < 0.5)
        if append:
            hi += 1
            total += int(token_counts[hi])
        else:
            lo -= 1
            total += int(token_counts[lo])
    return lo, hi


def grow_video_clip(
    centre: int, length: int, n_seconds: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Grow the one-second clip at ``centre`` to ``min(length, n_seconds)`` seconds.

    Returns ``(start, end)`` with ``end`` exclusive. Each step adds a second on the left or the right
    with probability 0.5; at the video's first (last) second the clip can only grow right (left).
    """
    if not 0 <= centre < n_seconds:
        raise ValueError(f"grow_video_clip: centre {centre} outside a {n_seconds}-second video")
    length = min(max(length, 1), n_seconds)
    start, end = centre, centre + 1
    while end - start < length:
        if start == 0:
            left = False
        elif end == n_seconds:
            left = True
        else:
            left = bool(rng.random() < 0.5)
        if left:
            start -= 1
        else:
            end += 1
    return start, end


def sample_pair(
    spans: Sequence[tuple[float, float]],
    token_counts: Sequence[int],
    n_seconds: int,
    rng: np.random.Generator,
    settings: SamplerSettings = SamplerSettings(),
) -> ClipPair:
    """Draw one overlapping pair from a video with captions at ``spans`` (seconds, time order).

    ``token_counts[i]`` is the number of text tokens of caption ``i`` (no special tokens).
    """
    if len(spans) == 0 or len(spans) != len(token_counts):
        raise ValueError(
            f"sample_pair: need one token count per caption, got {len(spans)} spans and "
            f"{len(token_counts)} counts"
        )
    first = int(rng.integers(len(spans)))
    target = int(rng.integers(settings.min_text_tokens, settings.max_text_tokens + 1))
    lo, hi = grow_text_span(first, token_counts, target, rng)
    sec_lo, _ = span_seconds(*spans[lo], n_seconds)
    _, sec_hi = span_seconds(*spans[hi], n_seconds)
    sec_hi = max(sec_hi, sec_lo + 1)
    centre = int(rng.integers(sec_lo, sec_hi))
    if settings.aligned:
        start, end = sec_lo, sec_hi
        if end - start > settings.max_video_seconds:
            start = centre - settings.max_video_seconds // 2
            start = min(max(start, sec_lo), sec_hi - settings.max_video_seconds)
            end = start + settings.max_video_seconds
    else:
        length = int(rng.integers(settings.min_video_seconds, settings.max_video_seconds + 1))
        start, end = grow_video_clip(centre, length, n_seconds, rng)
    return ClipPair(text_first=lo, text_last=hi, centre=centre, video_start=start, video_end=end)


def sample_pairs(
    spans: Sequence[tuple[float, float]],
    token_counts: Sequence[int],
    n_seconds: int,
    count: int,
    rng: np.random.Generator,
    settings: SamplerSettings = SamplerSettings(),
) -> list[ClipPair]:
    """``count`` independent pairs from one video (SPEC §3 draws 16 per video)."""
    return [sample_pair(spans, token_counts, n_seconds, rng, settings) for _ in range(count)]
