"""JPEG thumbnails for search results, encoded with FFmpeg's MJPEG encoder through PyAV.

Thumbnails are made at build time from frames the build decodes anyway and stored in the catalog,
so the server never decodes video and needs no imaging library.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def encode_jpeg(rgb: np.ndarray, quality: int = 4) -> bytes:
    """Encode one uint8 RGB image [H, W, 3] as a baseline JPEG.

    ``quality`` is FFmpeg's qscale: 2 (best) .. 31 (smallest). 4:4:4 chroma keeps odd sizes legal
    and small thumbnails sharp.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_jpeg expects uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if not 2 <= quality <= 31:
        raise ValueError(f"JPEG quality (qscale) must be in 2..31, got {quality}")
    height, width = rgb.shape[:2]
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuvj444p"
    codec.time_base = Fraction(1, 1)
    # Pinning the quantiser range is what fixes the quality; the encoder ignores a bare qscale.
    codec.options = {"qmin": str(quality), "qmax": str(quality)}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame = frame.reformat(format="yuvj444p")
    packets = list(codec.encode(frame)) + list(codec.encode(None))
    return b"".join(bytes(p) for p in packets)
