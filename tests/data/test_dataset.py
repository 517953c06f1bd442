"""VideoTextDataset, collate and the frame cache, on small real videos."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vtrkit.config import DataConfig
from vtrkit.data import decode
from vtrkit.data.cache import FrameCache
from vtrkit.data.dataset import VideoTextDataset, caption_key, collate, frames_from_uint8
from vtrkit.data.records import VideoRecord
from vtrkit.data.sampling import FrameSampling

NF, NW, S = 4, 8, 32
SAMPLING = FrameSampling(NF, 1.0, S)
LEVEL_BASE, LEVEL_STEP = 16, 5


def uniform_grey(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index`` as one grey level, so a decoded frame tells which source frame it is."""
    return np.full((height, width, 3), LEVEL_BASE + LEVEL_STEP * index, dtype=np.uint8)


class WordTokenizer:
    """Start id 1, one id per word (3 + position in a growing vocabulary), end id 2, pad 0."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, texts: Sequence[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(texts), max_words, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [self.vocab.setdefault(w, 3 + len(self.vocab)) for w in text.split()]
            seq = [1, *words[: max_words - 2], 2]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids, ids != 0


@pytest.fixture
def records(make_video) -> list[VideoRecord]:
    # gop=1: intra-only frames keep each frame's grey level exact (P-frames smear the steps).
    a = make_video("a.mp4", seconds=3.0, fps=10.0, gop=1, draw=uniform_grey).path
    b = make_video("b.mp4", seconds=2.0, fps=10.0, gop=1, draw=uniform_grey).path
    return [
        VideoRecord("a", a, ["A red  Circle", "a blue square moves"], "test"),
        VideoRecord("b", b, ["a red circle"], "test", window=(1.0, 2.0)),
    ]


def grey_index(frame: torch.Tensor) -> int:
    """Source frame index of a normalised :func:`uniform_grey` frame [3,S,S]."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    level = float(((frame * std + mean) * 255).mean())
    return round((level - LEVEL_BASE) / LEVEL_STEP)


def test_caption_key_is_normalised_and_stable() -> None:
    assert caption_key("A red  Circle") == caption_key(" a red circle")
    assert caption_key("a red circle") != caption_key("a red square")
    # A fixed value: the key must not depend on the process (Python's hash() would).
    digest = hashlib.blake2b(b"a red circle", digest_size=8).digest()
    assert caption_key("a red circle") == int.from_bytes(digest, "little", signed=True)


def test_pairs_items_match_decoder_and_batch_shapes(records) -> None:
    ds = VideoTextDataset(records, WordTokenizer(), SAMPLING, NW, "pairs")
    assert len(ds) == 3
    item = ds[2]
    frames, mask, _ = decode.load_frames(records[1].path, SAMPLING, (1.0, 2.0))
    assert torch.equal(item["frames"], frames) and torch.equal(item["video_mask"], mask)
    assert mask.tolist() == [True, False, False, False]  # one second in the window at 1 fps
    assert grey_index(item["frames"][0]) == 10  # the frame at t = 1 s of a 10-fps clip
    batch = collate([ds[i] for i in range(3)])
    assert batch["frames"].shape == (3, NF, 3, S, S) and batch["frames"].dtype == torch.float32
    assert batch["video_mask"].shape == (3, NF) and batch["video_mask"].dtype == torch.bool
    assert batch["input_ids"].shape == (3, NW) and batch["input_ids"].dtype == torch.long
    assert batch["text_mask"].dtype == torch.bool
    assert batch["video_index"].tolist() == [0, 0, 1]
    keys = batch["caption_key"].tolist()
    assert keys[0] == keys[2] != keys[1]  # "A red  Circle" and "a red circle" are one caption
    assert batch["text_mask"][1].sum() == 6  # start + 4 words + end


def test_videos_and_texts_modes(records) -> None:
    videos = VideoTextDataset(records, None, SAMPLING, NW, "videos")
    assert len(videos) == 2 and set(videos[1]) == {"frames", "video_mask", "video_index"}
    assert [grey_index(videos[0]["frames"][k]) for k in range(3)] == [0, 10, 20]
    texts = VideoTextDataset(records, WordTokenizer(), SAMPLING, NW, "texts")
    assert len(texts) == 3 and "frames" not in texts[0]
    assert texts.text_to_video.tolist() == [0, 0, 1]
    assert [int(texts[i]["video_index"]) for i in range(3)] == [0, 0, 1]
    assert texts.captions[1] == "a blue square moves"
    with pytest.raises(ValueError, match="mode"):
        VideoTextDataset(records, None, SAMPLING, NW, "frames")  # type: ignore[arg-type]


def test_unexpanded_pairs_draw_each_caption(records, tmp_path) -> None:
    cfg = DataConfig(
        num_frames=NF, max_words=NW, image_size=S, expand_sentences=False, frame_cache=tmp_path
    )
    ds = VideoTextDataset.from_config(records, WordTokenizer(), cfg, "pairs")
    assert (ds.sampling, ds.max_words, ds.expand) == (SAMPLING, NW, False)
    assert ds.cache is not None and ds.cache.root == tmp_path
    assert len(ds) == 2
    torch.manual_seed(0)
    seen = {int(ds[0]["caption_key"]) for _ in range(20)}
    assert seen == {caption_key(c) for c in records[0].captions}


def test_failed_video_is_skipped_counted_and_dropped_by_validate(
    records, broken_videos, caplog
) -> None:
    bad = VideoRecord("bad", broken_videos["truncated"], ["a broken clip"], "test")
    text = VideoRecord("txt", broken_videos["text"], ["not a video"], "test")
    ds = VideoTextDataset([records[0], bad, text], WordTokenizer(), SAMPLING, NW, "pairs")
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert [it is None for it in items] == [False, False, True, True]
    assert set(ds.failures) == {"bad", "txt"} and "truncated.mp4" in ds.failures["bad"]
    assert "truncated.mp4" in caplog.text
    batch = collate(items)
    assert batch is not None and batch["video_index"].tolist() == [0, 0]
    assert collate([None, None]) is None
    loader = DataLoader(ds, batch_size=4, num_workers=0, collate_fn=collate)
    assert [b["frames"].shape[0] for b in loader] == [2]

    fresh = VideoTextDataset([bad, records[0], text], WordTokenizer(), SAMPLING, NW, "pairs")
    dropped = fresh.validate()
    assert set(dropped) == {"bad", "txt"}
    assert [r.video_id for r in fresh.records] == ["a"] and len(fresh) == 2
    assert int(fresh[0]["video_index"]) == 0  # indices refer to the remaining records


def test_cache_gives_identical_frames_and_decodes_once(records, tmp_path, monkeypatch) -> None:
    cache = FrameCache(tmp_path / "cache")
    plain = VideoTextDataset(records, None, SAMPLING, NW, "videos")
    expected = [plain[i] for i in range(2)]
    cached = VideoTextDataset(records, None, SAMPLING, NW, "videos", cache=cache)
    for _ in range(2):
        for i in range(2):
            item = cached[i]
            assert torch.equal(item["frames"], expected[i]["frames"])
            assert torch.equal(item["video_mask"], expected[i]["video_mask"])
    assert (cache.misses, cache.hits) == (2, 2)  # the second pass read the cache

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(decode, "read_sampled_frames", no_decoding)
    again = VideoTextDataset(records, None, SAMPLING, NW, "videos", cache=tmp_path / "cache")
    assert torch.equal(again[0]["frames"], expected[0]["frames"])
    stored = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(stored) == 4 and not any(n.startswith(".tmp") for n in stored)

    # A changed file (new mtime) or other sampling parameters miss the cache.
    key = cache.key(records[0].path, SAMPLING, None)
    assert key != cache.key(records[0].path, replace(SAMPLING, num_frames=NF + 1), None)
    assert key != cache.key(records[0].path, replace(SAMPLING, fps=2.0), None)
    assert key != cache.key(records[0].path, replace(SAMPLING, image_size=S + 1), None)
    assert key != cache.key(records[0].path, SAMPLING, (0.0, 1.0))
    stat = records[0].path.stat()
    os.utime(records[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.get(records[0].path, SAMPLING, None) is None


def test_cache_stores_uint8_and_recovers_from_damage(records, tmp_path) -> None:
    cache = FrameCache(tmp_path)
    frames, stamps = cache.load(records[0].path, SAMPLING, None)
    assert frames.dtype == np.uint8 and frames.shape == (3, S, S, 3)
    assert stamps.tolist() == [0.0, 1.0, 2.0]
    entry = next(tmp_path.rglob("*[0-9a-f].npy"))
    entry.write_bytes(b"garbage")
    assert cache.get(records[0].path, SAMPLING, None) is None and not entry.exists()
    with pytest.raises(ValueError, match="uint8"):
        cache.put(records[0].path, SAMPLING, None, frames.astype(np.float32), stamps)


def test_cache_memory_serves_later_epochs_without_disk_and_stays_bounded(
    records, tmp_path, monkeypatch
) -> None:
    plain = VideoTextDataset(records, None, SAMPLING, NW, "videos")
    expected = [plain[i]["frames"] for i in range(2)]
    first = [a.nbytes for a in FrameCache(tmp_path / "probe").load(records[0].path, SAMPLING, None)]
    cache = FrameCache(tmp_path / "cache", memory_bytes=sum(first))  # room for the first video
    cached = VideoTextDataset(records, None, SAMPLING, NW, "videos", cache=cache)
    assert [torch.equal(cached[i]["frames"], expected[i]) for i in range(2)] == [True, True]

    loads: list[str] = []
    real_load = np.load

    def counted_load(path, **kwargs):
        loads.append(Path(path).name)
        return real_load(path, **kwargs)

    monkeypatch.setattr(np, "load", counted_load)
    for _ in range(2):  # the first video is held in memory; the second did not fit the budget
        assert [torch.equal(cached[i]["frames"], expected[i]) for i in range(2)] == [True, True]
    second = cache.key(records[1].path, SAMPLING, records[1].window)
    assert sorted(loads) == [f"{second}.npy"] * 2 + [f"{second}.ts.npy"] * 2
    assert cache._memory_used == sum(first) and (cache.misses, cache.hits) == (2, 4)

    # The config's budget reaches the dataset's cache; 0 keeps nothing in memory.
    cfg = DataConfig(
        dataset="custom", num_frames=NF, image_size=S, max_words=NW, frame_cache=tmp_path
    )
    from_config = VideoTextDataset.from_config(records, None, cfg, "videos")
    assert from_config.cache is not None and from_config.cache.memory_bytes == 1024 << 20
    none_kept = VideoTextDataset(records, None, SAMPLING, NW, "videos", cache=tmp_path)
    none_kept[0]
    assert none_kept.cache is not None and none_kept.cache._memory_used == 0


def test_frames_from_uint8_pads_with_zero_images() -> None:
    pixels = np.full((2, S, S, 3), 128, dtype=np.uint8)
    frames, mask = frames_from_uint8(pixels, NF, S)
    assert mask.tolist() == [True, True, False, False]
    assert torch.count_nonzero(frames[2:]) == 0 and torch.count_nonzero(frames[:2]) > 0
    with pytest.raises(ValueError, match="slots"):
        frames_from_uint8(np.zeros((5, S, S, 3), dtype=np.uint8), NF, S)
