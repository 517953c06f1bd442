"""Test helpers for the build's frame path: a fake encoder with it, and generated test videos.

:class:`FakeFrameEncoder` is :class:`index_helpers.FakeEncoder` plus the frame path
(:class:`vtrkit.inference.FrameEncoder`): a frame's feature is its quadrant colours, a window's
the normalised mean of its real frames, so both paths give the same numbers and the tests can
tell which one ran (``frames_encoded`` against ``windows_encoded``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from index_helpers import FakeEncoder
from torch import Tensor
from torch.nn import functional as F

from vtrkit.models.base import VideoFeatures


class FakeFrameEncoder(FakeEncoder):
    """:class:`FakeEncoder` with the per-frame path; counts frames and windows encoded."""

    encodes_frames = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frames_encoded = 0

    def encode_frame_images(self, images: Tensor) -> Tensor:
        self.frames_encoded += images.shape[0]
        return self.frame_features(images[:, None])[:, 0]

    def windows_from_frame_features(self, features: Tensor, mask: Tensor) -> VideoFeatures:
        self.video_calls += 1
        self.windows_encoded += features.shape[0]
        weights = mask.float().unsqueeze(-1)
        pooled = F.normalize((features * weights).sum(1) / weights.sum(1), dim=-1)
        return VideoFeatures(pooled, features.clone(), mask.clone())


def write_shots(
    path: Path,
    cuts: list[float],
    duration: float,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
) -> Path:
    """An H.264 video of shots starting at ``cuts`` (seconds; the first is 0): each shot a
    random blocky texture drifting one pixel every 4 frames, so frames within a shot are alike
    and cuts are sharp."""
    width, height = size
    rng = np.random.default_rng(seed)
    textures = [
        rng.integers(0, 256, (height // 8 + 1, width // 8 + 8, 3), np.uint8)
        .repeat(8, 0)
        .repeat(8, 1)
        for _ in cuts
    ]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i in range(round(duration * fps)):
            t = i / fps
            shot = max(j for j, c in enumerate(cuts) if c <= t + 1e-9)
            shift = min(63, (i - round(cuts[shot] * fps)) // 4)
            image = np.ascontiguousarray(textures[shot][:height, shift : shift + width])
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_noise_video(
    path: Path, seconds: int, fps: int = 10, size: tuple[int, int] = (64, 48), faststart=False
) -> Path:
    """Random frames (every frame differs, so damage shows) as H.264; ``faststart`` puts the
    index first, so that a file cut short still opens."""
    width, height = size
    rng = np.random.default_rng(1)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        base = rng.integers(0, 256, (height, width, 3), np.uint8)
        for i in range(seconds * fps):
            image = np.roll(base, i, axis=1)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def random_model_frames(n: int, nf: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Normalised random frames [n, nf, 3, S, S] and a mask [n, nf] with some padding; padded
    slots hold zeros, as decoded windows do."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, nf, 3, size, size, generator=g)
    mask = torch.ones(n, nf, dtype=torch.bool)
    for i in range(n):
        mask[i, nf - (i % nf) :] = False
    frames[~mask] = 0
    return frames, mask
