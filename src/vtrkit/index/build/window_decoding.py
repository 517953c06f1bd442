"""Decode one video into its windows: model inputs for every window plus a thumbnail each.

Frames are sampled per window with the same decoder and SPEC §0 sampling as training and
evaluation (``vtrkit.data.decode.read_sampled_frames``), so an indexed window gets exactly the
features an evaluation of that clip would.

Shapes: W windows, Nf frame slots, S image size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vtrkit.data.sampling import FrameSampling
from vtrkit.index.build.thumbnails import encode_jpeg
from vtrkit.index.build.windows import WHOLE_CLIP_WINDOWS, plan_windows

log = logging.getLogger(__name__)


@dataclass
class DecodedVideo:
    """Model inputs of one video's windows.

    frames: [W, Nf, 3, S, S] float32, normalised; padded slots are all zero.
    mask: [W, Nf] bool, True at real frames (every window has at least one).
    windows: W (start, end) spans in seconds.
    thumbnails: W JPEG images (the middle real frame of each window).
    """

    duration: float
    windows: list[tuple[float, float]]
    frames: Tensor
    mask: Tensor
    thumbnails: list[bytes]


def _pad(pixels: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
    """uint8 [n, S, S, 3] -> (normalised [Nf, 3, S, S], mask [Nf]); real frames first."""
    from vtrkit.data.transforms import pad_clip, to_model_input

    return pad_clip(to_model_input(pixels), num_frames)


def decode_windows(
    path: str | Path,
    sampling: FrameSampling,
    window_length: float,
    window_stride: float,
    thumbnail_quality: int = 5,
) -> DecodedVideo:
    """Split ``path`` into windows (:func:`~vtrkit.index.build.windows.plan_windows`) and decode
    each as ``sampling`` says; the reference the single-pass build
    (:mod:`vtrkit.index.build.frame_decoding`) matches.

    The first window is decoded before the duration is known (it is ``(0, length)`` for any video
    long enough to have several windows); the container's duration then fixes the other windows.
    A video shorter than two windows is one window sampled over the whole video, as evaluation
    samples a clip. Later windows that yield no frame (a truncated file whose header promises
    more) are dropped with a warning; the video is indexed with the windows that decode.

    Raises ``VideoDecodeError`` when the file cannot be opened or its first window not decoded.
    """
    from vtrkit.data import decode

    path = Path(path)
    first_pixels, _, info = decode.read_sampled_frames(path, sampling, (0.0, window_length))
    duration = float(info.duration)
    spans = plan_windows(duration, window_length, window_stride)
    if duration < WHOLE_CLIP_WINDOWS * window_length:
        first_pixels, _, _ = decode.read_sampled_frames(path, sampling, None)
    frames, masks, thumbs, kept = [], [], [], []
    for i, span in enumerate(spans):
        if i == 0:
            pixels = first_pixels
        else:
            try:
                pixels, _, _ = decode.read_sampled_frames(path, sampling, span)
            except decode.VideoDecodeError as exc:
                log.warning("%s: window %.1f-%.1f s skipped: %s", path, *span, exc.cause)
                continue
        x, m = _pad(pixels, sampling.num_frames)
        frames.append(x)
        masks.append(m)
        middle = np.ascontiguousarray(pixels[pixels.shape[0] // 2].numpy())
        thumbs.append(encode_jpeg(middle, thumbnail_quality))
        kept.append(span)
    return DecodedVideo(duration, kept, torch.stack(frames), torch.stack(masks), thumbs)
