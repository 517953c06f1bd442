"""JPEG thumbnails for search results, encoded with FFmpeg's MJPEG encoder through PyAV.

Small thumbnails are made at build time from frames the build decodes anyway (at the model's
input size, square) and stored in the catalog, a fallback that needs no video file. The page
shows :func:`frame_thumbnail` instead: the frame at a window's middle decoded from the file at a
readable size (:data:`THUMB_WIDTH` pixels wide at most, the video's own aspect ratio, upright,
never cropped), made when first asked for and cached by the server.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vtrkit.data.transforms import Orientation

THUMB_WIDTH = 320
"""Width in pixels of :func:`frame_thumbnail` images (narrower videos keep their own width)."""


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


def _upright(frame: av.VideoFrame) -> Orientation:
    for side_data in frame.side_data:
        if side_data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            matrix = np.frombuffer(bytes(side_data), dtype="<i4").tolist()
            return Orientation.from_display_matrix(matrix) or Orientation()
    return Orientation()


def _frame_at(path: Path, seconds: float) -> av.VideoFrame:
    """The frame shown at ``seconds`` (player time; the last one before it at worst)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin = (container.start_time or 0) / av.time_base
        if seconds > 0:
            target = int((seconds + origin) / stream.time_base)
            container.seek(target, stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            if chosen is not None and frame.time is not None and frame.time > seconds + origin:
                break
            chosen = frame
        if chosen is None:
            raise ValueError(f"{path}: no frame could be decoded near {seconds:.2f} s")
        return chosen


def frame_thumbnail(
    path: str | Path, seconds: float, width: int = THUMB_WIDTH, quality: int = 5
) -> bytes:
    """JPEG of the frame of the video at ``path`` shown at ``seconds``: upright, ``width`` pixels
    wide at most (narrower videos keep their size), the video's aspect ratio, never cropped.

    Raises ``av.error.FFmpegError`` or ``ValueError`` when the file or the frame cannot be read.
    """
    frame = _frame_at(Path(path), max(0.0, seconds))
    orientation = _upright(frame)
    upright_w, upright_h = orientation.upright_size(frame.width, frame.height)
    scale = min(1.0, width / upright_w)
    out_w, out_h = max(1, round(upright_w * scale)), max(1, round(upright_h * scale))
    stored_w, stored_h = (out_h, out_w) if orientation.transpose else (out_w, out_h)
    rgb = frame.to_ndarray(format="rgb24", width=stored_w, height=stored_h, interpolation="AREA")
    image = orientation.apply(torch.from_numpy(rgb)).contiguous().numpy()
    return encode_jpeg(image, quality)
