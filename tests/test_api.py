"""The public five-line API loads a saved run and scores its own videos like the model does."""

import pytest
import torch

import vtrkit
from vtrkit.config import load_config
from vtrkit.data.decode import load_frames
from vtrkit.data.sampling import FrameSampling
from vtrkit.data.synthetic import generate
from vtrkit.models.build import build_model
from vtrkit.train.checkpoint import save_checkpoint

TINY = [
    "model.kind=xclip",
    "model.temporal_layers=1",
    "model.temporal_heads=2",
    "data.num_frames=4",
    "data.max_words=16",
    "data.image_size=32",
    "model.backbone.arch={embed_dim: 32, image_size: 32, patch_size: 16, vision_width: 32, "
    "vision_layers: 1, vision_heads: 2, text_width: 32, text_layers: 1, text_heads: 2}",
]


def test_load_encode_score_matches_model(tmp_path):
    data = tmp_path / "synthetic"
    generate(data, n_train=2, n_test=3, n_long=0, seed=1, workers=1)
    videos = sorted((data / "videos").glob("*.mp4"))[:3]
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg.model, cfg.data)
    save_checkpoint(tmp_path / "run" / "best", model, cfg)

    loaded = vtrkit.load_model(tmp_path / "run")
    assert loaded.sampling == FrameSampling(4, 1.0, 32) == cfg.data.sampling
    feats = vtrkit.encode_videos(loaded, videos)
    texts = vtrkit.encode_texts(loaded, ["a red circle moves left", "a blue square grows"])
    scores = vtrkit.similarity(loaded, texts, feats)
    assert scores.shape == (2, 3)

    model.eval()
    with torch.no_grad():
        clips = [load_frames(p, FrameSampling(4, 1.0, 32)) for p in videos]
        ref_video = model.encode_video(
            torch.stack([c[0] for c in clips]), torch.stack([c[1] for c in clips])
        )
        ids, mask = tokenizer(["a red circle moves left", "a blue square grows"], 16)
        ref = model.similarity(model.encode_text(ids, mask), ref_video)
    torch.testing.assert_close(scores, ref, atol=1e-5, rtol=1e-5)


def test_load_model_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        vtrkit.load_model()
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint"):
        vtrkit.load_model(backbone=tmp_path / "missing.pt")
