"""One forward pass over a video file: its frame timeline without decoding, then each frame once.

:func:`vtrkit.data.decode.read_sampled_frames` reads one window and seeks to each of its frames;
an index build needs the frames of many (overlapping) windows of the same file, so it reads the
file once with :class:`SinglePass`:

1. :meth:`SinglePass.timeline` demuxes the video packets without decoding them (a small fraction
   of the cost of decoding) and returns their presentation times, converted exactly as
   ``read_sampled_frames`` converts them, so :func:`vtrkit.data.sampling.sample_frame_indices`
   over these times picks the same frames for any window.
2. :meth:`SinglePass.frames` decodes from the start in presentation order. Packets whose frame the
   caller does not want are decoded only if other frames reference them (FFmpeg's
   ``skip_frame = NONREF``, as the seeking path does). A packet that fails to decode (damaged data
   in the middle of a file) is counted in :attr:`SinglePass.errors` and skipped, so the frames
   after the damage still come out; a container that cannot be read further ends the pass there
   (:attr:`SinglePass.stopped_early`).

Frames are converted with :func:`frame_image` exactly as ``read_sampled_frames`` converts them
(upright, resized, center-cropped), so a window assembled from this pass holds the same pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
from torch import Tensor

from vtrkit.data.decode import _average_fps, _frame_to_image, _metadata_duration, _Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timeline:
    """What the container announces about a video's frames, read without decoding.

    pts: presentation timestamps (stream ticks) of the video packets in decode order.
    times: the same in seconds from the container start; ``-inf`` for packets never shown (cut by
        an edit list), so no window ever samples them.
    duration: seconds, from the container's metadata (else from the last frame).
    frame_step: seconds between frames (1 / average frame rate; 0.04 when unknown).
    complete: False when the scan stopped at unreadable container data before the end.
    duration_from: where ``duration`` comes from: ``stream`` (the video stream's own duration),
        ``container`` (the whole file's, which may include a longer audio track) or ``frames``.
    """

    pts: list[int]
    times: list[float]
    duration: float
    frame_step: float
    complete: bool = True
    duration_from: str = "stream"

    @property
    def last_time(self) -> float:
        """Presentation time of the last announced frame (-inf when none)."""
        return max(self.times, default=-math.inf)


def frame_image(frame: av.VideoFrame, size: int) -> Tensor:
    """A decoded frame as ``read_sampled_frames`` returns it: upright uint8 [size, size, 3]."""
    return _frame_to_image(frame, size)[0]


class SinglePass:
    """An open video file read forward once (see the module docstring).

    Raises :class:`~vtrkit.data.decode.VideoDecodeError` when the file cannot be opened or has no
    video stream.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._source = _Source(self.path)
        self._scanned = False
        self.errors = 0
        """Packets that failed to decode during :meth:`frames`."""
        self.error_times: list[float] = []
        """Presentation times (seconds) of those packets, where known."""
        self.stopped_early = False
        """True when :meth:`frames` ended at container data it could not read."""

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> SinglePass:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def time_base(self) -> float:
        """Seconds per stream tick."""
        return self._source.time_base

    def seconds(self, pts: int) -> float:
        """Stream ticks -> seconds from the container start (as ``read_sampled_frames``)."""
        return self._source.seconds(pts)

    def timeline(self) -> Timeline | None:
        """Scan the video packets (no decoding); None when a packet has no timestamp (the caller
        then reads the file window by window, where the decoder falls back to decoded times)."""
        source = self._source
        self._scanned = True
        pts: list[int] = []
        hidden: list[bool] = []
        complete = True
        packets = source.packets()
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                log.info("%s: packet scan stopped at unreadable data: %s", self.path, exc)
                complete = False
                break
            if packet.size == 0:
                continue
            if packet.pts is None:
                return None
            pts.append(int(packet.pts))
            hidden.append(bool(packet.is_discard))
        times = [-math.inf if h else source.seconds(p) for p, h in zip(pts, hidden, strict=True)]
        duration = _metadata_duration(source)
        stream_duration = source.stream.duration
        origin = "stream" if stream_duration is not None and stream_duration > 0 else "container"
        rate = _average_fps(source, duration)
        step = 1.0 / rate if rate > 0 else 0.04
        if duration is None:
            shown = [t for t in times if math.isfinite(t)]
            duration = max(shown) + step if shown else 0.0
            origin = "frames"
        return Timeline(pts, times, float(duration), step, complete, origin)

    def frames(self, wanted: Container[int] | None = None) -> Iterator[av.VideoFrame]:
        """Every decoded frame in presentation order, from the start of the file.

        With ``wanted`` (a set of presentation timestamps), packets outside it are skipped where
        no other frame needs them; frames outside it may still come out (reference frames), so
        the caller selects by ``frame.pts``. Stop iterating once every wanted frame came out.
        """
        source = self._source
        if self._scanned:
            source.reopen()
        self._scanned = True
        context = source.stream.codec_context
        skipping = False
        packets = source.packets()
        try:
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:
                    log.warning("%s: the file cannot be read past this point: %s", self.path, exc)
                    self.stopped_early = True
                    yield from self._decode(None)
                    break
                skip = (
                    wanted is not None
                    and packet.size > 0
                    and packet.pts is not None
                    and packet.pts not in wanted
                )
                if skip != skipping:
                    context.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
                yield from self._decode(packet)
        finally:
            context.skip_frame = "DEFAULT"

    def _decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return self._source.decode(packet)
        except av.error.FFmpegError as exc:
            self.errors += 1
            if packet is not None and packet.pts is not None:
                self.error_times.append(self._source.seconds(packet.pts))
            log.debug("%s: a packet failed to decode: %s", self.path, exc)
            return []
