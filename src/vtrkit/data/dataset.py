"""The torch Dataset over :class:`VideoRecord` lists: decoded frames, tokens and caption keys.

Three modes share one record list, so training and evaluation index videos identically:

- ``"pairs"``: one item per (video, caption), or with ``expand=False`` one item per video with a
  caption drawn at random each time (CLIP4Clip's non-expanded sampling);
- ``"videos"``: one item per video, frames only (evaluation encodes each video once);
- ``"texts"``: one item per caption, tokens only, in record order then caption order.

Videos that fail to decode are logged, remembered and skipped: ``__getitem__`` returns None and
:func:`collate` drops it. ``failures`` maps video ids to the reason; it is exact with
``num_workers=0`` but each DataLoader worker keeps its own copy otherwise (workers still log a
warning naming the file). Call :meth:`VideoTextDataset.validate` before training or evaluation to
probe every video up front and drop the broken ones, which also fixes ``video_index`` for good.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vtrkit.data.cache import FrameCache
from vtrkit.data.records import VideoRecord
from vtrkit.data.sampling import FrameSampling

if TYPE_CHECKING:
    from vtrkit.backbones.tokenizer import Tokenizer
    from vtrkit.config import DataConfig

logger = logging.getLogger(__name__)

Mode = Literal["pairs", "videos", "texts"]
MODES: tuple[str, ...] = ("pairs", "videos", "texts")
Item = dict[str, Tensor]

PROBE_SIZE = 32
"""Frame size used by :meth:`VideoTextDataset.validate` when it only probes (no cache)."""


def normalize_caption(text: str) -> str:
    """Lowercase with whitespace runs collapsed: captions equal under this share a key."""
    return " ".join(text.lower().split())


def caption_key(text: str) -> int:
    """Stable signed 64-bit key of the normalised caption (same text -> same key, any process)."""
    digest = hashlib.blake2b(normalize_caption(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def frames_from_uint8(
    frames: np.ndarray | Tensor, num_frames: int, size: int
) -> tuple[Tensor, Tensor]:
    """Cached uint8 frames [n,H,W,3] -> (normalised frames [Nf,3,S,S] float32, mask [Nf] bool).

    The same preprocessing and padding as ``decode.load_frames``: real frames first, padded
    slots all zero after normalisation, ``n`` must not exceed ``num_frames``.
    """
    from vtrkit.data import transforms

    pixels = torch.as_tensor(np.asarray(frames))
    if pixels.shape[0] > num_frames:
        raise ValueError(f"{pixels.shape[0]} frames cannot fit {num_frames} slots")
    images = (
        transforms.preprocess(pixels, size) if pixels.shape[0] else torch.empty(0, 3, size, size)
    )
    return transforms.pad_clip(images, num_frames)


def collate(items: Sequence[Item | None]) -> dict[str, Tensor] | None:
    """Stack items into a batch, dropping the ``None`` of failed videos.

    Returns tensors with a leading batch axis B (``frames`` [B,Nf,3,S,S], ``video_mask``
    [B,Nf], ``input_ids`` [B,Nw], ``text_mask`` [B,Nw], ``video_index`` [B], ``caption_key``
    [B]), or None when every item of the batch failed (the caller skips such a batch).
    """
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    return {key: torch.stack([item[key] for item in kept]) for key in kept[0]}


class VideoTextDataset(Dataset):
    """Items for training and evaluation, see the module docstring for the three modes.

    Item keys (before :func:`collate` stacks them into a batch of B):
    ``frames`` [Nf,3,S,S] float32 and ``video_mask`` [Nf] bool (pairs, videos);
    ``input_ids`` [Nw] long and ``text_mask`` [Nw] bool (pairs, texts);
    ``video_index`` [] long, the position of the video in ``records`` (all modes);
    ``caption_key`` [] long, :func:`caption_key` of the caption (pairs, texts).

    ``sampling`` says how frames are taken (Nf, fps, S); ``window`` on a record restricts
    decoding; ``cache`` (a :class:`FrameCache` or a folder) keeps decoded uint8 frames so each
    video is decoded once across epochs, and with ``cache_memory_mb`` also holds up to that many
    MB of them in memory, so later epochs do not read them from disk again.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        tokenizer: Tokenizer | None,
        sampling: FrameSampling = FrameSampling(),
        max_words: int = 32,
        mode: Mode = "pairs",
        *,
        cache: FrameCache | Path | str | None = None,
        expand: bool = True,
        cache_memory_mb: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if tokenizer is None and mode != "videos":
            raise ValueError(f"mode {mode!r} needs a tokenizer")
        self.records = list(records)
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_words = max_words
        self.mode = mode
        self.expand = expand
        if isinstance(cache, (str, Path)):
            cache = FrameCache(cache, memory_bytes=cache_memory_mb << 20)
        self.cache = cache
        self._tokenized: dict[str, tuple[Tensor, Tensor]] = {}
        self.failures: dict[str, str] = {}
        self._failed: set[int] = set()
        self._build_index()

    collate = staticmethod(collate)

    @classmethod
    def from_config(
        cls,
        records: Sequence[VideoRecord],
        tokenizer: Tokenizer | None,
        cfg: DataConfig,
        mode: Mode = "pairs",
    ) -> VideoTextDataset:
        """The dataset ``cfg`` describes: frame/word counts, size, fps, cache, caption expansion."""
        return cls(
            records,
            tokenizer,
            cfg.sampling,
            cfg.max_words,
            mode,
            cache=cfg.frame_cache,
            expand=cfg.expand_sentences,
            cache_memory_mb=cfg.frame_cache_memory_mb,
        )

    # ------------------------------------------------------------------ indexing

    def _build_index(self) -> None:
        """``items``: (record index, caption index); caption index -1 means "draw one"."""
        if self.mode == "videos" or (self.mode == "pairs" and not self.expand):
            self.items = [(v, -1) for v in range(len(self.records))]
        else:
            self.items = [
                (v, c) for v, record in enumerate(self.records) for c in range(len(record.captions))
            ]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def text_to_video(self) -> Tensor:
        """[T] long: the video index of every caption, in ``"texts"`` mode order."""
        return torch.tensor(
            [v for v, record in enumerate(self.records) for _ in record.captions], dtype=torch.long
        )

    @property
    def captions(self) -> list[str]:
        """Every caption in ``"texts"`` mode order."""
        return [c for record in self.records for c in record.captions]

    # ------------------------------------------------------------------ loading

    def _tokens(self, text: str) -> tuple[Tensor, Tensor]:
        """Token ids [Nw] and mask [Nw] of a caption, tokenised once per dataset (the captions
        are fixed, and collate copies them into the batch)."""
        assert self.tokenizer is not None
        known = self._tokenized.get(text)
        if known is None:
            ids, mask = self.tokenizer([text], self.max_words)
            known = self._tokenized[text] = (ids[0].long(), mask[0].bool())
        return known

    def _frames(self, record: VideoRecord) -> tuple[Tensor, Tensor]:
        if self.cache is not None:
            pixels, _ = self.cache.load(record.path, self.sampling, record.window)
            return frames_from_uint8(pixels, self.sampling.num_frames, self.sampling.image_size)
        from vtrkit.data import decode

        frames, mask, _ = decode.load_frames(record.path, self.sampling, record.window)
        return frames, mask

    def _frames_or_none(self, index: int) -> tuple[Tensor, Tensor] | None:
        from vtrkit.data.decode import VideoDecodeError

        if index in self._failed:
            return None
        record = self.records[index]
        try:
            return self._frames(record)
        except VideoDecodeError as exc:
            self._failed.add(index)
            self.failures[record.video_id] = str(exc)
            logger.warning("skipping video %s (%s): %s", record.video_id, record.path, exc)
            return None

    def __getitem__(self, i: int) -> Item | None:
        v, c = self.items[i]
        record = self.records[v]
        item: Item = {"video_index": torch.tensor(v, dtype=torch.long)}
        if self.mode != "texts":
            loaded = self._frames_or_none(v)
            if loaded is None:
                return None
            item["frames"], item["video_mask"] = loaded
        if self.mode != "videos":
            if c < 0:
                c = int(torch.randint(len(record.captions), ()).item())
            text = record.captions[c]
            item["input_ids"], item["text_mask"] = self._tokens(text)
            item["caption_key"] = torch.tensor(caption_key(text), dtype=torch.long)
        return item

    # ------------------------------------------------------------------ validation

    def _probe(self, record: VideoRecord) -> None:
        if self.cache is not None:
            # Decoding into the cache both checks the file and saves the work for epoch one.
            self.cache.load(record.path, self.sampling, record.window)
            return
        from vtrkit.data import decode

        probe = replace(self.sampling, num_frames=1, image_size=PROBE_SIZE)
        decode.read_sampled_frames(record.path, probe, record.window)

    def validate(self, num_threads: int = 1) -> dict[str, str]:
        """Probe every video, drop the records that fail to decode, and return {video_id: reason}.

        Without a cache a probe decodes one small frame (the container opens and yields a
        frame); with a cache it decodes and stores the full sampling, so the first epoch reads
        from the cache. ``video_index`` refers to the remaining records afterwards.
        """
        from vtrkit.data.decode import VideoDecodeError

        def attempt(record: VideoRecord) -> str | None:
            try:
                self._probe(record)
            except VideoDecodeError as exc:
                return str(exc)
            return None

        if num_threads > 1:
            with ThreadPoolExecutor(num_threads) as pool:
                reasons = list(pool.map(attempt, self.records))
        else:
            reasons = [attempt(r) for r in self.records]
        broken = {r.video_id: why for r, why in zip(self.records, reasons, strict=True) if why}
        if broken:
            logger.warning(
                "%d of %d videos cannot be decoded and are dropped: %s",
                len(broken),
                len(self.records),
                "; ".join(f"{k}: {v}" for k, v in list(broken.items())[:5]),
            )
        self.records = [r for r, why in zip(self.records, reasons, strict=True) if not why]
        self.failures.update(broken)
        self._failed.clear()
        self._build_index()
        return broken
