"""Tokenizer, narrated videos over stored features and pair batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import D_IN
from vtrkit.data.records import Segment, VideoRecord
from vtrkit.videoclip.data import (
    PairBatcher,
    build_word_tokenizer,
    feature_statistics,
    load_narrated_videos,
    load_tokenizer,
    record_segments,
)
from vtrkit.videoclip.sampler import SamplerSettings, span_seconds


def test_word_tokenizer_round_trips_through_its_folder(tmp_path: Path):
    tok = build_word_tokenizer(["A red circle moves left.", "a blue square appears"])
    assert (tok.pad_id, tok.cls_id, tok.sep_id) == (0, 2, 3)
    ids = tok.token_ids("a RED square. jumps")
    unk = tok.hf.convert_tokens_to_ids("[UNK]")
    assert len(ids) == 5 and ids[4] == unk and unk not in ids[:4]
    assert ids[0] == tok.token_ids("a")[0]
    reloaded = load_tokenizer(tok.save(tmp_path / "tok"))
    assert reloaded.token_ids("a RED square. jumps") == ids
    assert reloaded.vocab_size == tok.vocab_size
    batch, mask = reloaded(["a red circle", "blue"], max_words=5)
    assert batch.tolist()[0] == [2, *tok.token_ids("a red circle"), 3]
    assert batch.tolist()[1] == [2, *tok.token_ids("blue"), 3, 0, 0]
    assert mask.sum(1).tolist() == [5, 3]
    # Truncation keeps [CLS] and [SEP] around the first max_words - 2 tokens.
    long_ids, _ = reloaded(["a red circle moves left"], max_words=4)
    assert long_ids.tolist()[0] == [2, *tok.token_ids("a red")[:2], 3]


def test_narrated_videos_join_records_and_features(corpus):
    root, records = corpus
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    extra = VideoRecord("unknown", Path("x.mp4"), ["the alpha step"], "train")
    videos = load_narrated_videos([*records, extra], root, tok, d_in=D_IN)
    assert [v.video_id for v in videos] == [r.video_id for r in records]
    v0 = videos[0]
    assert v0.features.shape == (40, D_IN) and v0.features.dtype == np.float16
    assert v0.texts == [s.text for s in records[0].segments]
    assert v0.token_counts == [3] * len(v0.texts)
    with pytest.raises(ValueError, match=r"model\.videoclip\.d_in=16"):
        load_narrated_videos(records, root, tok, d_in=512)


def test_segments_past_the_features_are_dropped_and_clip_records_span_their_window():
    rec = VideoRecord(
        "v",
        Path("v.mp4"),
        ["x", "y"],
        "train",
        segments=[Segment(50.0, 55.0, "late"), Segment(2.0, 4.0, "early")],
    )
    assert record_segments(rec, 30) == [(2.0, 4.0, "early")]
    clip = VideoRecord("c", Path("c.mp4"), ["one", "two"], "train", window=(3.0, 9.0))
    assert record_segments(clip, 30) == [(3.0, 9.0, "one"), (3.0, 9.0, "two")]


def test_pair_batches_hold_the_sampled_seconds_and_caption_tokens(corpus):
    root, records = corpus
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    videos = load_narrated_videos(records, root, tok)
    batcher = PairBatcher(videos, tok, SamplerSettings(), pairs_per_video=4, max_text_tokens=7)
    rng = np.random.default_rng(0)
    pairs = batcher.sample([3, 5], rng)
    batch = batcher.collate(pairs)
    assert batch["video_index"].tolist() == [3] * 4 + [5] * 4
    assert batch["input_ids"].shape[0] == 8 and batch["video_feats"].shape[2] == D_IN
    for row, (v, pair) in enumerate(pairs):
        video = videos[v]
        n = pair.video_seconds
        assert batch["video_mask"][row].sum() == n
        expected = torch.from_numpy(video.features[pair.video_start : pair.video_end].astype("f4"))
        assert torch.equal(batch["video_feats"][row, :n], expected)
        assert not batch["video_feats"][row, n:].any()
        words = [i for k in range(pair.text_first, pair.text_last + 1) for i in video.token_ids[k]]
        length = int(batch["text_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == [tok.cls_id, *words[:7], tok.sep_id]
        # The pair overlaps in time.
        lo, _ = span_seconds(*video.spans[pair.text_first], video.seconds)
        _, hi = span_seconds(*video.spans[pair.text_last], video.seconds)
        assert max(lo, pair.video_start) < min(hi, pair.video_end)


def test_feature_statistics_match_numpy_over_all_seconds(corpus):
    root, records = corpus
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    videos = load_narrated_videos(records, root, tok)
    mean, std = feature_statistics(videos)
    stacked = np.concatenate([np.asarray(v.features, dtype=np.float64) for v in videos])
    assert np.allclose(mean.numpy(), stacked.mean(0), atol=1e-5)
    assert np.allclose(std.numpy(), stacked.std(0), atol=1e-5)
