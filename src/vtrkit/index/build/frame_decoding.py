"""Decode one video once for the index: the frames all its windows need, then the window plan.

:func:`decode_video` reads the file in one forward pass (:class:`vtrkit.data.single_pass.SinglePass`)
and hands each sampled frame to ``emit`` as soon as it is decoded, so the encoder can start on a
video before its decoding ends and a long video never sits in memory as pixels. A frame shared by
overlapping windows is emitted once. The returned :class:`VideoPlan` says which frames (by key)
fill each window.

Fixed windows (``mode="fixed"``) sample each window exactly as the per-window path
(:func:`vtrkit.index.build.window_decoding.decode_windows`) does: SPEC §0 over the presentation
times the container announces, so the frames, and hence the features, are the same. Windows that
follow shots (``mode="shots"``) are planned in :mod:`vtrkit.index.build.shots`. A video shorter
than two windows is one window over the whole video in both modes, sampled as evaluation samples
a whole clip.

Damage is reported, not hidden: when packets fail to decode, the file ends before its declared
duration, or a window gets fewer frames than the container announced for it, the plan's
``damage`` says which windows and seconds are affected and the video is indexed as partial.

Shapes: S image size; keys are presentation timestamps (stream ticks).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from vtrkit.data.sampling import FrameSampling, sample_frame_indices
from vtrkit.data.single_pass import SinglePass, Timeline, frame_image
from vtrkit.data.transforms import to_model_input
from vtrkit.index.build.shots import (
    ShotDetector,
    ShotSampler,
    min_shot_length,
    plan_shot_windows,
)
from vtrkit.index.build.thumbnails import encode_jpeg
from vtrkit.index.build.windows import WHOLE_CLIP_WINDOWS, plan_windows

log = logging.getLogger(__name__)

WindowMode = Literal["fixed", "shots"]
WINDOW_MODES: tuple[str, ...] = ("fixed", "shots")
THUMBNAIL_QUALITY = 5


@dataclass(frozen=True)
class WindowSpec:
    """How a build cuts videos into windows and samples them (the index's settings): each
    window of ``length`` s (every ``stride`` s) is sampled as ``sampling`` says."""

    sampling: FrameSampling
    length: float
    stride: float
    mode: WindowMode = "fixed"


@dataclass
class SampledFrame:
    """One decoded frame for the encoder: its key and its pixels, uint8 [S, S, 3] as
    ``read_sampled_frames`` returns them (or float [3, S, S] already normalised); see
    :func:`model_input`."""

    key: int
    image: Tensor


def model_input(images: list[Tensor]) -> Tensor:
    """Stack sampled frames' images as normalised model input [N, 3, S, S]."""
    if images and images[0].dtype == torch.uint8:
        return to_model_input(torch.stack(images))
    return torch.stack(images)


@dataclass
class VideoPlan:
    """What fills a video's windows, known once its pass is over.

    windows: W (start, end) spans in seconds; keys: the frame keys of each window in time order
    (1..Nf each); thumbnails: W JPEG images or None (the middle frame of each window).
    damage: why the video is only partly indexed (None when it decoded completely).
    """

    duration: float
    windows: list[tuple[float, float]]
    keys: list[list[int]]
    thumbnails: list[bytes | None]
    damage: str | None = None
    frames: int = 0
    """Distinct frames emitted."""


@dataclass
class _Pass:
    """State of one pass: frames emitted so far and their thumbnails."""

    spec: WindowSpec
    emit: Callable[[SampledFrame], None]
    seen: set[int] = field(default_factory=set)
    jpegs: dict[int, bytes] = field(default_factory=dict)
    last_time: float = -math.inf

    def take(self, frame, key: int, seconds: float, thumbnail: bool) -> None:
        pixels = frame_image(frame, self.spec.sampling.image_size)
        if thumbnail:
            self.jpegs[key] = encode_jpeg(np.ascontiguousarray(pixels.numpy()), THUMBNAIL_QUALITY)
        self.seen.add(key)
        self.last_time = max(self.last_time, seconds)
        self.emit(SampledFrame(key, pixels))


def decode_video(
    path: str | Path, spec: WindowSpec, emit: Callable[[SampledFrame], None]
) -> VideoPlan:
    """Decode ``path`` once, calling ``emit`` for every sampled frame; returns the window plan.

    Raises :class:`~vtrkit.data.decode.VideoDecodeError` when the file cannot be opened or no
    window gets a frame. A file whose packets carry no timestamps is read window by window
    (:func:`~vtrkit.index.build.window_decoding.decode_windows`), emitting each window's frames.
    """
    from vtrkit.data.decode import VideoDecodeError

    path = Path(path)
    with SinglePass(path) as video:
        timeline = video.timeline()
        if timeline is None:
            return _decode_by_windows(path, spec, emit)
        state = _Pass(spec, emit)
        whole = timeline.duration < WHOLE_CLIP_WINDOWS * spec.length
        if spec.mode == "shots" and not whole:
            windows, keys = _shot_pass(video, timeline, state)
            expected = None
        else:
            windows, keys, expected = _fixed_pass(video, timeline, state)
        damage = _damage(video, timeline, state, windows, keys, expected)
    kept = [i for i, k in enumerate(keys) if any(key in state.seen for key in k)]
    if not kept:
        raise VideoDecodeError(path, "no frame of the video could be decoded")
    if damage:
        log.warning("%s: indexed partly: %s", path, damage)
    real = [[key for key in keys[i] if key in state.seen] for i in kept]
    return VideoPlan(
        duration=timeline.duration,
        windows=[windows[i] for i in kept],
        keys=real,
        thumbnails=[state.jpegs.get(k[len(k) // 2]) for k in real],
        damage=damage,
        frames=len(state.seen),
    )


def _fixed_pass(
    video: SinglePass, timeline: Timeline, state: _Pass
) -> tuple[list[tuple[float, float]], list[list[int]], list[int]]:
    """Plan fixed windows from the announced times, then decode just the frames they sample."""
    spec = state.spec
    windows = plan_windows(timeline.duration, spec.length, spec.stride)
    # A whole-clip window samples the whole stream, as evaluation does; others their span.
    whole = timeline.duration < WHOLE_CLIP_WINDOWS * spec.length
    keys = []
    nf, fps = spec.sampling.num_frames, spec.sampling.fps
    for span in windows:
        chosen = sample_frame_indices(timeline.times, nf, fps, None if whole else span)
        keys.append([timeline.pts[i] for i in chosen])
    wanted = {k for window in keys for k in window}
    middles = {k[len(k) // 2] for k in keys if k}
    left = set(wanted)
    for frame in video.frames(wanted):
        if frame.pts in left:
            left.discard(frame.pts)
            state.take(frame, frame.pts, video.seconds(frame.pts), frame.pts in middles)
            if not left:
                break
    return windows, keys, [len(k) for k in keys]


def _shot_pass(
    video: SinglePass, timeline: Timeline, state: _Pass
) -> tuple[list[tuple[float, float]], list[list[int]]]:
    """Decode every frame, detect cuts and sample each shot from its cut; then plan windows."""
    spec = state.spec
    detector = ShotDetector()
    sampler = ShotSampler(spec.sampling.fps)
    for frame in video.frames():
        if frame.pts is None:
            continue
        seconds = video.seconds(frame.pts)
        if not math.isfinite(seconds) or seconds < 0:
            continue
        cut = detector.is_cut(frame, seconds)
        if sampler.offer(seconds, frame.pts, cut):
            state.take(frame, frame.pts, seconds, thumbnail=True)
    duration = max(timeline.duration, state.last_time)
    planned = plan_shot_windows(
        sampler.shots,
        duration,
        spec.length,
        min_shot_length(spec.length, spec.sampling.fps),
        spec.sampling.num_frames,
    )
    return [(w.start, w.end) for w in planned], [w.keys for w in planned]


def _damage(
    video: SinglePass,
    timeline: Timeline,
    state: _Pass,
    windows: list[tuple[float, float]],
    keys: list[list[int]],
    expected: list[int] | None,
) -> str | None:
    """Why the video is only partly indexed, or None (see the module docstring)."""
    reasons = []
    if expected is not None:
        short = [
            (span, sum(k in state.seen for k in window), want)
            for span, window, want in zip(windows, keys, expected, strict=True)
            if sum(k in state.seen for k in window) < want
        ]
        if short:
            listed = ", ".join(
                f"{a:.1f}-{b:.1f} s ({got} of {want} frames)" for (a, b), got, want in short[:5]
            )
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            reasons.append(f"{len(short)} of {len(windows)} windows miss frames: {listed}{more}")
    if video.errors:
        times = video.error_times
        where = f" between {min(times):.1f} and {max(times):.1f} s" if times else ""
        reasons.append(f"{video.errors} packets could not be decoded{where}")
    # The video stream's own duration is exact; a container's may include a longer audio track.
    if timeline.duration_from == "stream":
        tolerance = max(1.0, 2.0 * timeline.frame_step, 0.02 * timeline.duration)
    else:
        tolerance = max(3.0, 0.1 * timeline.duration)
    if timeline.duration_from != "frames" and state.last_time < timeline.duration - tolerance:
        reasons.append(
            f"frames end at {max(state.last_time, 0.0):.1f} s of a declared "
            f"{timeline.duration:.1f} s (cut short?): {max(state.last_time, 0.0):.1f}-"
            f"{timeline.duration:.1f} s not indexed"
        )
    elif video.stopped_early or not timeline.complete:
        reasons.append("the container could not be read to its end")
    return "; ".join(reasons) or None


def _decode_by_windows(
    path: Path, spec: WindowSpec, emit: Callable[[SampledFrame], None]
) -> VideoPlan:
    """Files without packet timestamps: the per-window decoder (exact, slower), fixed windows."""
    from vtrkit.index.build.window_decoding import decode_windows

    decoded = decode_windows(path, spec.sampling, spec.length, spec.stride)
    keys: list[list[int]] = []
    count = 0
    for frames, mask in zip(decoded.frames, decoded.mask, strict=True):
        keys.append(list(range(count, count + int(mask.sum()))))
        for key, image in zip(keys[-1], frames[mask], strict=True):
            emit(SampledFrame(key, image))
        count += len(keys[-1])
    return VideoPlan(
        decoded.duration,
        decoded.windows,
        keys,
        list(decoded.thumbnails),
        frames=count,
    )
