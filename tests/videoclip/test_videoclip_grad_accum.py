"""VideoCLIP on the one training loop: gradient accumulation equals one big micro-batch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import D_IN, make_corpus, tiny_videoclip_config
from vtrkit.videoclip.data import build_word_tokenizer, load_narrated_videos
from vtrkit.videoclip.train import train_videoclip


def test_videoclip_grad_accum_equals_one_big_micro_batch(tmp_path):
    root = tmp_path / "features"
    records = make_corpus(root, 12)
    tok = build_word_tokenizer([c for r in records for c in r.captions])
    videos = load_narrated_videos(records, root, tok, D_IN)
    weights = {}
    for accum in (1, 2):
        out = tmp_path / f"accum{accum}"
        # Two groups of 4 videos per optimiser step: one micro-batch of both, or one each.
        cfg = tiny_videoclip_config(
            out, root, {"dropout": 0.0}, {"epochs": 2, "batch_size": 8, "grad_accum": accum}
        )
        _, result = train_videoclip(cfg, videos, tok)
        assert result.steps == 2
        weights[accum] = load_file(str(out / "last" / "model.safetensors"))
    # The step's loss (mean over its micro-batches) is the same number either way ...
    losses = {a: _logged_losses(tmp_path / f"accum{a}") for a in (1, 2)}
    assert len(losses[1]) == 2
    torch.testing.assert_close(losses[1][0], losses[2][0], atol=1e-5, rtol=0)
    # ... and so are the weights. Adam's first steps move every weight by about lr·sign(g), so
    # float rounding in near-zero gradient entries shows at a few 1e-6 of a weight.
    for k in weights[1]:
        torch.testing.assert_close(weights[1][k], weights[2][k], atol=2e-5, rtol=0, msg=k)


def _logged_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]
