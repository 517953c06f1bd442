"""VideoCLIP training end to end on a tiny corpus: learning, groups, checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conftest import D_IN, tiny_videoclip_config
from vtrkit.config import Config
from vtrkit.videoclip.data import PairBatcher, build_word_tokenizer, load_narrated_videos
from vtrkit.videoclip.train import (
    epoch_groups,
    global_video_vectors,
    load_videoclip,
    sampler_settings,
    train_videoclip,
)
from vtrkit.videoclip.zeroshot import encode_clips, evaluate_zero_shot


def _config(out: Path, features: Path, **videoclip) -> Config:
    return tiny_videoclip_config(out, features, videoclip, {"epochs": 12})


def test_training_learns_and_the_checkpoint_reloads(corpus, tmp_path: Path):
    torch.set_num_threads(1)
    root, records = corpus
    cfg = _config(tmp_path / "run", root)
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    videos = load_narrated_videos(records, root, tok, D_IN)
    evaluated = []

    def evaluate_fn(model):
        out = evaluate_zero_shot(model, tok, videos[:4], cfg.model.videoclip)
        evaluated.append(out)
        return out

    cfg.train.eval_every_epoch = False
    model, result = train_videoclip(cfg, videos, tok, evaluate_fn=evaluate_fn)
    assert result.steps == 12 * (12 // 4) and result.epochs == 12
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == result.steps
    assert all(r["pairs"] == 16 for r in logged if "pairs" in r)
    # Initial loss is about ln(16) = 2.77 for 16 pairs; the one-hot features are easy to learn.
    assert np.mean(losses[:3]) > 2.0 and np.mean(losses[-6:]) < 0.75 * np.mean(losses[:3])
    assert len(evaluated) == 1 and "loc/frame_acc" in result.last_eval
    assert (tmp_path / "run" / "best").is_dir() and (tmp_path / "run" / "tokenizer").is_dir()

    reloaded, tok2, saved_cfg = load_videoclip(tmp_path / "run")
    assert saved_cfg.model.videoclip.cluster_k == 4
    assert tok2.token_ids("the golf step") == tok.token_ids("the golf step")
    clips = [videos[0].features[2:9], videos[1].features[:16]]
    model.eval()
    assert torch.allclose(encode_clips(reloaded, clips, 16), encode_clips(model, clips, 16))


def test_epoch_groups_follow_the_switch(corpus, tmp_path: Path):
    torch.set_num_threads(1)
    root, records = corpus
    cfg = _config(tmp_path / "run", root)
    vc = cfg.model.videoclip
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    videos = load_narrated_videos(records, root, tok, D_IN)
    from vtrkit.videoclip.train import model_for

    model = model_for(vc, tok)
    batcher = PairBatcher(videos, tok, sampler_settings(vc), 4, vc.max_text_tokens)
    vectors = global_video_vectors(model, batcher, np.random.default_rng(0), videos_per_chunk=5)
    assert vectors.shape == (12, 32) and np.isfinite(vectors).all()
    # The global vector is the mean over pairs of (video + text) / 2: recompute one by hand.
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    got = global_video_vectors(model, batcher, rng_a, videos_per_chunk=12)
    batch = batcher.batch(range(12), rng_b)
    model.eval()
    with torch.no_grad():
        v = model.encode_video(batch["video_feats"], batch["video_mask"])
        t = model.encode_text(batch["input_ids"], batch["text_mask"])
    expected = ((v + t) / 2)[batch["video_index"] == 7].mean(0)
    assert np.allclose(got[7], expected.numpy(), atol=1e-5)
    for augment in (True, False):
        vc.retrieval_augment = augment
        groups = epoch_groups(model, batcher, vc, np.random.default_rng(0))
        assert len(groups) == 3 and all(len(g) == 4 for g in groups)
    # Random groups partition the videos; cluster groups need not.
    assert len({int(i) for g in groups for i in g}) == 12


def test_time_budget_stops_training_after_the_step_that_spends_it(corpus, tmp_path: Path):
    torch.set_num_threads(1)
    root, records = corpus
    cfg = _config(tmp_path / "run", root, retrieval_augment=False)
    cfg.train.time_budget_s = 0.0
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    videos = load_narrated_videos(records, root, tok, D_IN)
    _, result = train_videoclip(cfg, videos, tok)
    assert result.steps == 1 and (tmp_path / "run" / "last").is_dir()
