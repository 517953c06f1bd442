"""The index with a real (tiny, random) X-CLIP model: the adapter, checkpoints, consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from index_helpers import COLOURS, tiny_config, write_video

from vtrkit.data.decode import load_frames
from vtrkit.data.sampling import FrameSampling
from vtrkit.index import IndexMismatchError, ModelEncoder, VideoIndex, load_model_for_index
from vtrkit.inference import fingerprint_model, zero_shot_config
from vtrkit.models.build import build_model
from vtrkit.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_config()
    model, _ = build_model(cfg.model, cfg.data)
    folder = tmp_path_factory.mktemp("run") / "checkpoint"
    save_checkpoint(folder, model, cfg)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("realvids")
    write_video(root / "a.mp4", [COLOURS["red"], COLOURS["blue"], COLOURS["green"]] * 2)
    write_video(root / "b.mp4", [COLOURS["yellow"]] * 2 + [COLOURS["cyan"]] * 2)
    return root


def test_checkpoint_loads_with_the_same_fingerprint_and_run_folders_resolve(checkpoint):
    encoder = load_model_for_index(checkpoint)
    assert encoder.sampling == FrameSampling(num_frames=3, fps=1.0, image_size=16)
    again = load_model_for_index(checkpoint.parent)  # a run folder holding checkpoint/
    assert again.fingerprint() == encoder.fingerprint()
    # Any changed weight changes the fingerprint.
    with torch.no_grad():
        next(again.model.parameters()).view(-1)[0] += 1e-3
    again._fingerprint = None
    assert again.fingerprint() != encoder.fingerprint()
    settings = {"num_frames": 3}
    assert fingerprint_model(encoder.model, settings) != fingerprint_model(
        encoder.model, {"num_frames": 4}
    )


def test_indexed_windows_equal_the_evaluation_pipeline(checkpoint, videos, tmp_path):
    encoder = load_model_for_index(checkpoint)
    index = VideoIndex.build(videos, tmp_path / "lib", encoder)
    assert encoder.source == {"kind": "checkpoint", "path": str(checkpoint.resolve())}
    model = encoder.model
    windows = index.catalog.windows()
    # a.mp4 is 6 s: 3-s windows every 1.5 s; b.mp4 is 4 s, shorter than two windows: one
    # window over the whole clip.
    assert [(w.start, w.end) for w in windows] == [
        (0.0, 3.0),
        (1.5, 4.5),
        (3.0, 6.0),
        (0.0, 4.0),
    ]
    store = index.library.store
    for w in windows:
        path = index.catalog.video(w.video_id).path
        frames, mask, _ = load_frames(path, FrameSampling(3, 1.0, 16), (w.start, w.end))
        with torch.no_grad():
            ref = model.encode_video(frames[None], mask[None])
        np.testing.assert_allclose(store.pooled(np.array([w.row]))[0], ref.video[0], atol=2e-3)
        np.testing.assert_allclose(store.frames(np.array([w.row]))[0], ref.frames[0], atol=2e-3)
        np.testing.assert_array_equal(store.mask(np.array([w.row]))[0], mask.numpy())

    # Re-ranking uses the model's own X-CLIP head on the stored features.
    hits = index.search("a red circle", k=5, rerank=5)
    rows = {x.id: x.row for x in windows}
    cand = np.array([rows[h.window_id] for h in hits])
    text = encoder.encode_texts(["a red circle"])
    video = index._video_features(cand)
    with torch.no_grad():
        expect = model.similarity(text, video)[0]
    np.testing.assert_allclose([h.score for h in hits], expect.numpy(), rtol=1e-5, atol=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    index.close()

    # Reopened with no encoder: the checkpoint recorded at build time is loaded and verified.
    with VideoIndex.open(tmp_path / "lib") as reopened:
        assert reopened.encoder.fingerprint() == encoder.fingerprint()
        assert [h.window_id for h in reopened.search("a red circle", k=5, rerank=5)] == [
            h.window_id for h in hits
        ]


def test_changed_checkpoint_is_refused_with_both_fingerprints(checkpoint, videos, tmp_path):
    encoder = load_model_for_index(checkpoint)
    VideoIndex.build(videos, tmp_path / "lib", encoder).close()
    torch.manual_seed(1)
    cfg = tiny_config()
    other, tokenizer = build_model(cfg.model, cfg.data)
    retrained = ModelEncoder(other, tokenizer, cfg.data)
    with pytest.raises(IndexMismatchError) as err:
        VideoIndex.open(tmp_path / "lib", retrained)
    assert encoder.fingerprint() in str(err.value)
    assert retrained.fingerprint() in str(err.value)
    assert str(checkpoint.resolve()) in str(err.value)


def test_zero_shot_config_is_mean_pooling_without_temporal_encoder(tmp_path):
    cfg = zero_shot_config(tmp_path / "ViT-B-32.pt", FrameSampling(num_frames=8, image_size=224))
    assert cfg.model.kind == "meanP" and cfg.model.temporal is False
    assert cfg.model.backbone.checkpoint == tmp_path / "ViT-B-32.pt"
    assert (cfg.data.num_frames, cfg.data.image_size) == (8, 224)
    assert cfg.data.sampling == FrameSampling(8, 1.0, 224)
