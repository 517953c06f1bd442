"""Which frames of a video are used (SPEC §0 "Frames"), as pure functions of frame timestamps.

A video is sampled at ``fps`` frames per second: time is cut into intervals of ``1/fps`` seconds
starting at the window start (0 without a window), and each interval contributes its first frame by
presentation timestamp; intervals that hold no frame (gaps in variable-frame-rate video) contribute
nothing. When more than ``num_frames`` frames remain, ``num_frames`` of them are kept at positions
``linspace(0, n - 1, num_frames)`` rounded half up. The decoder applies exactly these functions to
the timestamps it reads from the container, so tests can check a decoder against them.

Choices the SPEC leaves open, fixed here:
- A window ``(start, end)`` is half-open: a frame at exactly ``end`` seconds is not used.
- A frame less than :data:`BOUNDARY_TOLERANCE` seconds before an interval boundary counts as on the
  boundary, so timestamps converted from integer ticks to floats (0.99999999 for 1.0) never shift a
  frame into the previous interval. Real frame spacings are many orders of magnitude larger.
- Rounding of the linspace positions is half up (``floor(x + 0.5)``); CLIP4Clip's released code
  truncates instead, which the SPEC does not follow.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BOUNDARY_TOLERANCE = 1e-6
"""Seconds by which a timestamp may fall short of an interval boundary and still count as on it."""

Window = tuple[float, float]


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from a video: at most ``num_frames`` frames sampled at ``fps`` per
    second, resized to ``image_size`` px square (SPEC §0).

    One value for what decoding, caching, datasets, encoders and indexes must agree on. Fields are
    stored as ``int``/``float``/``int`` (so ``fps=1`` and ``fps=1.0`` are the same sampling and
    serialise alike); bad values raise ``ValueError`` naming the field.
    """

    num_frames: int = 12
    fps: float = 1.0
    image_size: int = 224

    def __post_init__(self) -> None:
        for name in ("num_frames", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        check_sampling_args(self.fps, None)
        object.__setattr__(self, "fps", float(self.fps))

    @property
    def span(self) -> float:
        """Seconds of video the sample covers at most: ``num_frames / fps``."""
        return self.num_frames / self.fps

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FrameSampling:
        """From a mapping with the keys ``num_frames``, ``fps`` and ``image_size`` (numbers or
        their strings, as an index catalog stores them); ``dataclasses.asdict`` is the inverse."""
        return cls(int(values["num_frames"]), float(values["fps"]), int(values["image_size"]))


def check_sampling_args(fps: float, window: Window | None) -> None:
    """Raise ``ValueError`` naming the bad argument when ``fps`` or ``window`` is unusable."""
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if window is not None:
        start, end = window
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise ValueError(
                f"window must be (start, end) seconds with 0 <= start < end, got {window!r}"
            )


def interval_of(timestamp: float, fps: float = 1.0, window: Window | None = None) -> int | None:
    """Index of the sampling interval holding ``timestamp`` (seconds), or None outside the window.

    Interval ``k`` covers ``[start + k/fps, start + (k+1)/fps)`` where ``start`` is the window start
    (0 without a window). Timestamps before ``start`` (e.g. negative pre-roll) are outside.
    """
    start, end = window if window is not None else (0.0, math.inf)
    if timestamp >= end - BOUNDARY_TOLERANCE:
        return None
    position = (timestamp - start) * fps + BOUNDARY_TOLERANCE * fps
    if position < 0:
        return None
    return math.floor(position)


def first_frame_per_interval(
    timestamps: Sequence[float], fps: float = 1.0, window: Window | None = None
) -> list[int]:
    """Indices into ``timestamps`` of the first frame of each non-empty interval, in time order.

    ``timestamps`` are presentation times in seconds, in any order (e.g. decode order); the first
    frame of an interval is the one with the smallest timestamp (the earliest index on ties).
    """
    check_sampling_args(fps, window)
    best: dict[int, int] = {}
    for index, t in enumerate(timestamps):
        interval = interval_of(t, fps, window)
        if interval is None:
            continue
        current = best.get(interval)
        if current is None or t < timestamps[current]:
            best[interval] = index
    return [best[k] for k in sorted(best)]


def uniform_subsample(count: int, num_frames: int) -> list[int]:
    """Positions ``round(linspace(0, count - 1, num_frames))`` when ``count > num_frames``.

    Returns ``range(count)`` when there are at most ``num_frames`` items. Rounding is half up.
    Result: strictly increasing positions in ``[0, count)``, at most ``num_frames`` of them.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    if count <= num_frames:
        return list(range(count))
    if num_frames == 1:
        return [0]
    # Exact integer form of floor(i * (count-1) / (num_frames-1) + 1/2): no float ties to misround.
    span, gaps = count - 1, num_frames - 1
    return [(2 * i * span + gaps) // (2 * gaps) for i in range(num_frames)]


def sample_frame_indices(
    timestamps: Sequence[float],
    num_frames: int = 12,
    fps: float = 1.0,
    window: Window | None = None,
) -> list[int]:
    """SPEC §0 selection: indices into ``timestamps`` of the frames to use, in time order.

    At most ``num_frames`` indices; an empty list when no frame lies inside the window.
    """
    candidates = first_frame_per_interval(timestamps, fps, window)
    return [candidates[p] for p in uniform_subsample(len(candidates), num_frames)]
