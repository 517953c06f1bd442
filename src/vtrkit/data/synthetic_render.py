"""Rendering synthetic plans to frames with numpy and encoding them as H.264 MP4 files.

Each object is drawn from a signed distance to its outline, evaluated for all frames at once
(arrays [F, H, W]), with a one-pixel soft edge so that resizing and chroma subsampling keep
shapes recognisable at 64x64. Events animate with a smoothstep between their start and end.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vtrkit.data.synthetic_scene import COLOURS, Background, Plan, simulate

# Triangle pointing up: apex (0, -r), base corners (+-TRI_HALF_BASE r, TRI_BASE r).
TRI_BASE = 0.75
TRI_HALF_BASE = 0.95
CROSS_ARM = 0.35  # half thickness of a cross arm, relative to the radius


def frame_times(duration: float, fps: float) -> np.ndarray:
    """Presentation time in seconds of every frame: [F] with F = round(duration * fps)."""
    return np.arange(round(duration * fps), dtype=np.float64) / fps


def progress(times: np.ndarray, start: float, end: float) -> np.ndarray:
    """Smoothstep from 0 (before ``start``) to 1 (after ``end``) over ``times`` [F]."""
    p = np.clip((times - start) / max(end - start, 1e-6), 0.0, 1.0)
    return p * p * (3.0 - 2.0 * p)


def object_tracks(plan: Plan, times: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per object: ``x``, ``y``, ``r``, ``alpha`` [F] and ``rgb`` [F, 3] over ``times``.

    Events never overlap, so each one blends from the value held so far towards its own
    end state; before an event its weight is 0 and afterwards 1.
    """
    states = simulate(plan)
    tracks = []
    for i, obj in enumerate(plan.objects):
        count = len(times)
        track = {
            "x": np.full(count, obj.x),
            "y": np.full(count, obj.y),
            "r": np.full(count, obj.r),
            "alpha": np.full(count, 1.0 if obj.visible else 0.0),
            "rgb": np.tile(np.asarray(COLOURS[obj.colour], dtype=np.float64), (count, 1)),
        }
        for k, event in enumerate(plan.events):
            if event.obj != i:
                continue
            after = states[k + 1][i]
            w = progress(times, event.start, event.end)
            targets = {
                "x": after.x,
                "y": after.y,
                "r": after.r,
                "alpha": 1.0 if after.visible else 0.0,
            }
            for key, value in targets.items():
                track[key] = track[key] * (1 - w) + value * w
            rgb = np.asarray(COLOURS[after.colour], dtype=np.float64)
            track["rgb"] = track["rgb"] * (1 - w)[:, None] + rgb * w[:, None]
        tracks.append(track)
    return tracks


def background_image(background: Background, size: int) -> np.ndarray:
    """Background [H, W, 3] float in 0..255 (greys only, so it never looks like an object)."""
    yy, xx = np.mgrid[0:size, 0:size]
    if background.kind == "checker":
        odd = ((yy // background.cell) + (xx // background.cell)) % 2 == 1
    elif background.kind == "stripes":
        odd = ((xx + yy) // background.cell) % 2 == 1
    else:
        odd = np.zeros((size, size), dtype=bool)
    grey = np.where(odd, background.level2, background.level).astype(np.float64)
    return np.repeat(grey[:, :, None], 3, axis=2)


def shape_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (negative inside) from offsets ``dx``, ``dy`` to the outline."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r * 0.85
    if shape == "triangle":
        nx, ny = 1.0 + TRI_BASE, TRI_HALF_BASE
        edge = (np.abs(dx) * nx - (dy + r) * ny) / np.hypot(nx, ny)
        return np.maximum(dy - TRI_BASE * r, edge)
    if shape == "cross":
        arm = CROSS_ARM * r
        horizontal = np.maximum(np.abs(dx) - r, np.abs(dy) - arm)
        vertical = np.maximum(np.abs(dy) - r, np.abs(dx) - arm)
        return np.minimum(horizontal, vertical)
    raise ValueError(f"unknown shape {shape!r}")


def render(plan: Plan, size: int, fps: float) -> np.ndarray:
    """All frames of ``plan``: uint8 [F, size, size, 3] RGB, F = round(duration * fps)."""
    times = frame_times(plan.duration, fps)
    background = background_image(plan.background, size).astype(np.float32)
    image = np.repeat(background[None], len(times), axis=0)
    centres = np.arange(size, dtype=np.float32) + 0.5
    for obj, track in zip(plan.objects, object_tracks(plan, times), strict=True):
        cx, cy, r = (track[k].astype(np.float32)[:, None, None] * size for k in ("x", "y", "r"))
        # Only the box the object ever covers is drawn: objects are small, frames are not.
        reach = track["r"] * size + 1.5
        x0, x1 = _span(track["x"] * size, reach, size)
        y0, y1 = _span(track["y"] * size, reach, size)
        dx = centres[None, None, x0:x1] - cx
        dy = centres[None, y0:y1, None] - cy
        cover = np.clip(0.5 - shape_distance(obj.shape, dx, dy, r), 0.0, 1.0)
        cover *= track["alpha"].astype(np.float32)[:, None, None]
        rgb = track["rgb"].astype(np.float32)[:, None, None, :]
        box = image[:, y0:y1, x0:x1]
        box += (rgb - box) * cover[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _span(centre: np.ndarray, reach: np.ndarray, size: int) -> tuple[int, int]:
    """Pixel range [lo, hi) covering ``centre +- reach`` over all frames, clipped to the frame."""
    lo = int(np.floor(np.min(centre - reach)))
    hi = int(np.ceil(np.max(centre + reach)))
    return max(lo, 0), min(max(hi, 0), size)


def encode_mp4(frames: np.ndarray, path: Path, fps: float, gop: int | None = None) -> None:
    """Write uint8 frames [F, H, W, 3] as H.264 (yuv420p) MP4, deterministically.

    One encoder thread and fixed options make the bytes depend only on the frames; a short
    GOP (one second by default) keeps seeking to any sampled second cheap.
    """
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop or max(1, round(fps))
        stream.codec_context.options = {
            "preset": "ultrafast",
            "crf": "16",
            "threads": "1",
            "sc_threshold": "0",
            "bframes": "0",
        }
        time_base = 1 / rate
        stream.codec_context.time_base = time_base
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = index, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
