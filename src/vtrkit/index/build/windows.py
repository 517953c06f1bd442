"""Splitting a video's time line into overlapping windows, the unit that the index stores and returns.

A long video is searched by windows of ``length`` seconds starting every ``stride`` seconds, so a
result carries start/end timestamps. The last window is aligned to the end of the video, so the tail
is never left out and no window runs past the video.

A clip shorter than :data:`WHOLE_CLIP_WINDOWS` windows is indexed as one window over the whole clip
(:func:`plan_windows`): that is how the models are trained and evaluated (Nf frames spread over a
whole clip), and splitting a 12-s clip into 8-s windows cost a third of R@1 on the demo's test
videos (issue 15). Windows that follow shots are planned in :mod:`vtrkit.index.build.shots`.
"""

from __future__ import annotations

import math


def split_windows(duration: float, length: float, stride: float) -> list[tuple[float, float]]:
    """Windows (start, end) in seconds covering ``[0, duration]``.

    Videos no longer than ``length`` give one window ``(0, duration)``. Otherwise windows start at
    0, stride, 2·stride, ... while they fit, and one more window ``(duration - length, duration)``
    covers the tail when the regular ones stop short of the end.
    """
    if not (length > 0 and stride > 0):
        raise ValueError(f"window length and stride must be positive (got {length}, {stride})")
    if stride > length:
        raise ValueError(
            f"window stride {stride} s is longer than the window length {length} s: "
            "parts of the video would never be searched; use a stride <= length"
        )
    if not math.isfinite(duration) or duration < 0:
        raise ValueError(f"video duration must be a finite non-negative number (got {duration})")
    if duration <= length:
        return [(0.0, float(duration))]
    windows: list[tuple[float, float]] = []
    count = math.floor((duration - length) / stride + 1e-9) + 1
    for i in range(count):
        start = i * stride
        windows.append((float(start), float(start + length)))
    if windows[-1][1] < duration - 1e-6:
        windows.append((float(duration - length), float(duration)))
    return windows


WHOLE_CLIP_WINDOWS = 2.0
"""Videos shorter than this many window lengths are one window over the whole video."""


def plan_windows(duration: float, length: float, stride: float) -> list[tuple[float, float]]:
    """The windows a build indexes: one ``(0, duration)`` window for a video shorter than
    :data:`WHOLE_CLIP_WINDOWS` × ``length``, otherwise :func:`split_windows`."""
    windows = split_windows(duration, length, stride)  # validates the arguments
    if duration < WHOLE_CLIP_WINDOWS * length:
        return [(0.0, float(duration))]
    return windows
