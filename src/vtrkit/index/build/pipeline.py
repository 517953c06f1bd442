"""The build's pipeline: decode ahead in worker threads, encode frames in full batches, yield
finished videos in order.

:class:`DecodeAhead` runs :func:`~vtrkit.index.build.frame_decoding.decode_video` for the next few
jobs in worker threads (PyAV and torch release the GIL while they work), each streaming its
sampled frames into a bounded queue of its own, so a worker never runs more than a few batches
ahead of the encoder and memory stays bounded. :class:`FramePipeline` reads those frames in job
order (the order videos are committed in), fills encoder batches of ``frame_batch`` frames across
video boundaries, keeps each video's frame features until its plan arrives, then builds all its
windows from them. The batches depend only on the job order and the batch size, never on timing,
so a build is reproducible.

Encoders without a frame path (:class:`~vtrkit.inference.FrameEncoder`) get each video's windows
assembled from its decoded frames and encoded with ``encode_video_windows``; decoding is still one
pass per file.

Shapes: N frames, W windows, Nf frame slots, S image size, D width.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import Tensor

from vtrkit.index.build.frame_decoding import SampledFrame, VideoPlan, model_input
from vtrkit.inference import Encoder, FrameEncoder
from vtrkit.models.base import VideoFeatures

log = logging.getLogger(__name__)

J = TypeVar("J")
QUEUE_FRAMES = 256
"""Decoded frames a worker may hold ahead of the encoder, per video (uint8, 150 KB each at 224
px): enough for a few minutes of video at 1 fps, so that workers decoding later videos really
work in parallel when the encoder is faster than one decoder (a GPU)."""


class _Stopped(BaseException):
    """The pipeline is closing; a worker abandons its video (a BaseException, so that the
    decode function's ``except Exception`` for broken files lets it through)."""


@dataclass
class _End:
    """Last item of a job's queue: its plan, or the reason it failed."""

    result: VideoPlan | str


class DecodeAhead(Generic[J]):
    """Decode ``jobs`` in ``workers`` threads, at most ``workers`` videos ahead of the reader.

    ``decode(job, emit)`` streams the job's frames through ``emit`` and returns its plan, or a
    failure reason string. Iterate to get ``(job, items)`` in job order, where ``items`` yields the
    job's frames and then one :class:`VideoPlan` or failure string. Use as a context manager: on
    exit the workers are stopped and joined, whatever happened.
    """

    def __init__(
        self,
        jobs: Sequence[J],
        decode: Callable[[J, Callable[[SampledFrame], None]], VideoPlan | str],
        workers: int = 2,
        queue_frames: int = QUEUE_FRAMES,
    ) -> None:
        self._jobs = list(jobs)
        self._decode = decode
        self._queue_frames = queue_frames
        self._lock = threading.Condition()
        self._next = 0
        self._queues: dict[int, queue.Queue] = {}
        self._slots = threading.Semaphore(max(1, workers) + 1)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"vtrkit-decode-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> DecodeAhead[J]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def __iter__(self) -> Iterator[tuple[J, Iterator[SampledFrame | VideoPlan | str]]]:
        for index, job in enumerate(self._jobs):
            with self._lock:
                while index not in self._queues:
                    self._lock.wait()
                q = self._queues[index]
            yield job, self._items(index, q)

    def _items(self, index: int, q: queue.Queue) -> Iterator[SampledFrame | VideoPlan | str]:
        try:
            while True:
                item = q.get()
                if isinstance(item, _End):
                    yield item.result
                    return
                yield item
        finally:
            with self._lock:
                self._queues.pop(index, None)
            self._slots.release()

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.1):
                continue
            with self._lock:
                index = self._next
                if index >= len(self._jobs):
                    self._slots.release()
                    return
                self._next += 1
                q: queue.Queue = queue.Queue(self._queue_frames)
                self._queues[index] = q
                self._lock.notify_all()
            try:
                result = self._decode(self._jobs[index], lambda item, q=q: self._put(q, item))
                self._put(q, _End(result))
            except _Stopped:
                return
            except BaseException as exc:  # recorded as this video's failure; the build goes on
                log.debug("decode worker failed", exc_info=True)
                try:
                    self._put(q, _End(f"{type(exc).__name__}: {exc}"))
                except _Stopped:
                    return

    def _put(self, q: queue.Queue, item: object) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


@dataclass
class EncodedVideo(Generic[J]):
    """A finished job: its plan and window features (``VideoFeatures`` of W windows), or the
    reason it failed."""

    job: J
    plan: VideoPlan | None
    features: VideoFeatures | None
    error: str | None = None


@dataclass
class _Video(Generic[J]):
    job: J
    keys: list[int] = field(default_factory=list)
    features: list[Tensor] = field(default_factory=list)
    images: dict[int, Tensor] = field(default_factory=dict)
    waiting: int = 0
    """Frames handed to the encoder whose features have not come back yet."""
    result: VideoPlan | str | None = None


class FramePipeline(Generic[J]):
    """Turn decoded jobs into encoded videos, in job order (see the module docstring)."""

    def __init__(self, encoder: Encoder, batch_windows: int, frame_batch: int | None = None):
        self.encoder = encoder
        self.batch_windows = max(1, batch_windows)
        self.frame_path: FrameEncoder | None = (
            encoder
            if isinstance(encoder, FrameEncoder) and getattr(encoder, "encodes_frames", False)
            else None
        )
        self.frame_batch = frame_batch or self.batch_windows * encoder.sampling.num_frames
        self._padding: Tensor | None = None
        self.frames_encoded = 0

    def run(
        self, decoded: Iterator[tuple[J, Iterator[SampledFrame | VideoPlan | str]]]
    ) -> Iterator[EncodedVideo[J]]:
        pending: deque[_Video[J]] = deque()
        batch: list[tuple[_Video[J], SampledFrame]] = []
        for job, items in decoded:
            video = _Video(job)
            pending.append(video)
            for item in items:
                if isinstance(item, SampledFrame):
                    if self.frame_path is None:
                        video.images[item.key] = item.image
                        continue
                    video.waiting += 1
                    batch.append((video, item))
                    if len(batch) >= self.frame_batch:
                        self._encode(batch)
                        batch = []
                        yield from self._finished(pending)
                else:
                    video.result = item
            yield from self._finished(pending)
        self._encode(batch)
        yield from self._finished(pending)

    def _encode(self, batch: list[tuple[_Video[J], SampledFrame]]) -> None:
        if not batch:
            return
        assert self.frame_path is not None
        self._padding_feature()  # first, so that batches keep their size
        images = model_input([frame.image for _, frame in batch])
        features = self.frame_path.encode_frame_images(images)
        self.frames_encoded += len(batch)
        for (video, frame), feature in zip(batch, features, strict=True):
            video.keys.append(frame.key)
            video.features.append(feature)
            video.waiting -= 1

    def _finished(self, pending: deque[_Video[J]]) -> Iterator[EncodedVideo[J]]:
        while pending and pending[0].result is not None and pending[0].waiting == 0:
            video = pending.popleft()
            if isinstance(video.result, str):
                yield EncodedVideo(video.job, None, None, video.result)
                continue
            assert video.result is not None
            yield EncodedVideo(video.job, video.result, self._windows(video, video.result))

    def _windows(self, video: _Video[J], plan: VideoPlan) -> VideoFeatures:
        """Features of every window of ``plan``, from the video's frame features or frames."""
        nf = self.encoder.sampling.num_frames
        mask = torch.zeros(len(plan.keys), nf, dtype=torch.bool)
        for w, keys in enumerate(plan.keys):
            mask[w, : len(keys)] = True
        parts = []
        if self.frame_path is None:
            size = self.encoder.sampling.image_size
            for start in range(0, len(plan.keys), self.batch_windows):
                chunk = plan.keys[start : start + self.batch_windows]
                frames = torch.zeros(len(chunk), nf, 3, size, size)
                for w, keys in enumerate(chunk):
                    frames[w, : len(keys)] = model_input([video.images[k] for k in keys])
                part = mask[start : start + len(chunk)]
                parts.append(self.encoder.encode_video_windows(frames, part))
            self.frames_encoded += sum(len(k) for k in plan.keys)
            return VideoFeatures.cat(parts)
        table = torch.cat([torch.stack(video.features), self._padding_feature()])
        row = {key: i for i, key in enumerate(video.keys)}
        pad = len(video.keys)
        index = torch.full((len(plan.keys), nf), pad, dtype=torch.long)
        for w, keys in enumerate(plan.keys):
            index[w, : len(keys)] = torch.tensor([row[k] for k in keys], dtype=torch.long)
        for start in range(0, len(plan.keys), self.batch_windows):
            stop = start + self.batch_windows
            parts.append(
                self.frame_path.windows_from_frame_features(
                    table[index[start:stop]], mask[start:stop]
                )
            )
        return VideoFeatures.cat(parts)

    def _padding_feature(self) -> Tensor:
        """[1, D]: the feature of an all-zero (normalised) image, what padded slots hold."""
        if self._padding is None:
            assert self.frame_path is not None
            size = self.encoder.sampling.image_size
            self._padding = self.frame_path.encode_frame_images(torch.zeros(1, 3, size, size))
        return self._padding
