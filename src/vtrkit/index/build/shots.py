"""Windows that follow shots (``windows="shots"``): cut points, per-shot sampling, window planning.

Cuts come from PySceneDetect's :class:`~scenedetect.ContentDetector` (HSV content change between
consecutive frames), fed the frames the build's single decoding pass decodes anyway, shrunk to a
few dozen pixels straight from the decoder's YUV planes: no second decode and no full-size colour
conversion. Cuts are reported at the first frame of the new shot (the detector's ``SUPPRESS``
mode, which never reports a cut later than the frame that shows it).

Each shot is sampled like a clip of its own (SPEC §0 from the shot's first frame: the first frame
of every ``1/fps`` interval counted from the cut), so a window starts exactly at its cut and its
first sampled frame is the first frame after the cut. :func:`plan_shot_windows` then merges shots
shorter than ``min_shot`` into the next one (the last into the one before) and splits a segment
longer than the window length into equal parts starting at sampled frames; a window holding more
than Nf sampled frames keeps Nf of them by SPEC §0's uniform subsampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import av
import numpy as np

from vtrkit.data.sampling import BOUNDARY_TOLERANCE, uniform_subsample

CUT_THRESHOLD = 27.0
"""ContentDetector's score (mean HSV change, 0-255) from which a frame starts a new shot (its
default)."""
MIN_CUT_GAP = 0.5
"""Seconds after a cut during which no other cut is reported (flashes, fast motion)."""
DETECT_SIZE = 48
"""Short side, in pixels, of the images the detector compares (at least)."""
DETECT_RATE = 10.0
"""Frames per second of video the detector looks at (every frame of slower videos): cuts are
placed within 1/10 s, well inside one sampled frame, at 40% of the cost for 25-fps video."""


def min_shot_length(length: float, fps: float) -> float:
    """Shots shorter than this many seconds are merged: a quarter window, at least 2 samples."""
    return max(2.0 / fps, length / 4.0)


class ShotDetector:
    """Says, frame by frame in presentation order, whether a frame starts a new shot."""

    def __init__(self, threshold: float = CUT_THRESHOLD, min_gap: float = MIN_CUT_GAP) -> None:
        from scenedetect import ContentDetector
        from scenedetect.common import FrameTimecode
        from scenedetect.detector import FlashFilter

        self._timecode = FrameTimecode
        self._detector = ContentDetector(
            threshold=threshold,
            min_scene_len=float(min_gap),
            filter_mode=FlashFilter.Mode.SUPPRESS,
        )

        self._next = -math.inf

    def is_cut(self, frame: av.VideoFrame, seconds: float) -> bool:
        """True when ``frame`` (shown at ``seconds``, frames in presentation order) starts a new
        shot; frames closer than 1/:data:`DETECT_RATE` s to the last one looked at are not
        looked at (False)."""
        if seconds < self._next - 1e-6:
            return False
        self._next = seconds + 1.0 / DETECT_RATE
        timecode = self._timecode(timecode=float(seconds), fps=1000.0)
        return bool(self._detector.process_frame(timecode, small_bgr(frame)))


def small_bgr(frame: av.VideoFrame) -> np.ndarray:
    """A BGR uint8 image about :data:`DETECT_SIZE` pixels on its short side.

    4:2:0 YUV frames (nearly all video) are subsampled straight from their planes and converted
    at that size; other formats go through FFmpeg's scaler.
    """
    import cv2

    step = max(1, min(frame.width, frame.height) // DETECT_SIZE // 2)
    if frame.format.name in ("yuv420p", "yuvj420p"):
        y = _plane(frame, 0)[:: 2 * step, :: 2 * step]
        u = _plane(frame, 1)[::step, ::step]
        v = _plane(frame, 2)[::step, ::step]
        h, w = min(y.shape[0], u.shape[0]), min(y.shape[1], u.shape[1])
        yuv = np.dstack([y[:h, :w], u[:h, :w], v[:h, :w]])
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)
    width = max(1, frame.width // (2 * step))
    height = max(1, frame.height // (2 * step))
    return frame.to_ndarray(format="bgr24", width=width, height=height)


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = frame.planes[index]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


@dataclass
class Shot:
    """One shot: where it starts (seconds) and its sampled frames (time, key) in time order."""

    start: float
    frames: list[tuple[float, int]] = field(default_factory=list)


class ShotSampler:
    """SPEC §0 sampling restarted at every cut: decides which decoded frames a shot keeps."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.shots: list[Shot] = [Shot(0.0)]
        self._interval = -1

    def offer(self, seconds: float, key: int, cut: bool) -> bool:
        """Frame ``key`` shown at ``seconds``, in presentation order; True when it is sampled
        (the first frame of an interval of its shot)."""
        shot = self.shots[-1]
        if cut and seconds > shot.start and shot.frames:
            shot = Shot(float(seconds))
            self.shots.append(shot)
            self._interval = -1
        position = (seconds - shot.start) * self.fps + BOUNDARY_TOLERANCE * self.fps
        interval = math.floor(position)
        if interval < 0 or interval <= self._interval:
            return False
        self._interval = interval
        shot.frames.append((float(seconds), key))
        return True


@dataclass(frozen=True)
class PlannedWindow:
    """A window to index: its span in seconds and the keys of its frames, in time order."""

    start: float
    end: float
    keys: list[int]


def plan_shot_windows(
    shots: list[Shot], duration: float, length: float, min_shot: float, num_frames: int
) -> list[PlannedWindow]:
    """Windows from shots (see the module docstring); shots without sampled frames are dropped.

    ``duration`` ends the last shot. Returns windows in time order, each with 1..Nf keys.
    """
    shots = [s for s in shots if s.frames]
    segments: list[Shot] = []
    for i, shot in enumerate(shots):
        end = shots[i + 1].start if i + 1 < len(shots) else max(duration, shot.frames[-1][0])
        pending = segments[-1] if segments else None
        if pending is not None and _length(pending, shot.start) < min_shot:
            pending.frames.extend(shot.frames)  # the short shot before joins this one
        else:
            segments.append(Shot(shot.start, list(shot.frames)))
        if i + 1 == len(shots) and len(segments) > 1 and end - segments[-1].start < min_shot:
            last = segments.pop()
            segments[-1].frames.extend(last.frames)
    ends = [s.start for s in segments[1:]] + [duration]
    windows: list[PlannedWindow] = []
    for segment, end in zip(segments, ends, strict=True):
        end = max(end, segment.frames[-1][0])
        windows.extend(_split(segment, end, length, num_frames))
    return windows


def _length(segment: Shot, end: float) -> float:
    return end - segment.start


def _split(segment: Shot, end: float, length: float, num_frames: int) -> list[PlannedWindow]:
    """Equal parts of at most ``length`` seconds, each starting at a sampled frame."""
    parts = max(1, math.ceil((end - segment.start) / length - 1e-9))
    starts = [segment.start]
    times = [t for t, _ in segment.frames]
    for j in range(1, parts):
        target = segment.start + j * (end - segment.start) / parts
        later = [t for t in times if t >= target - BOUNDARY_TOLERANCE and t > starts[-1]]
        if later:
            starts.append(later[0])
    bounds = [*starts[1:], end]
    out = []
    for start, stop in zip(starts, bounds, strict=True):
        keys = [k for t, k in segment.frames if start <= t < stop or (stop == end and t >= stop)]
        if not keys:
            continue
        keys = [keys[p] for p in uniform_subsample(len(keys), num_frames)]
        out.append(PlannedWindow(float(start), float(stop), keys))
    return out
