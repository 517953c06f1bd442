"""VideoCLIP dual encoder: pooling, video token layout, text encoder loading, loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, BertTokenizerFast

from vtrkit.config import VideoClipConfig
from vtrkit.losses.contrastive import contrastive_loss
from vtrkit.train.objectives import VideoClipObjective
from vtrkit.videoclip.model import build_videoclip, pool_tokens

TINY = {"hidden": 32, "heads": 4, "text_layers": 2, "video_layers": 2, "d_in": 12}


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = VideoClipConfig(**{**TINY, **kw})
    return build_videoclip(cfg, vocab_size=50, cls_id=2, sep_id=3, pad_id=0).eval()


def test_pooling_excludes_cls_and_includes_sep():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = pool_tokens(hidden, mask)
    # Row 0: [CLS] t1 [SEP] pad pad -> mean of positions 1 and 2 (the token and [SEP]).
    assert torch.allclose(pooled[0], hidden[0, 1:3].mean(0))
    assert torch.allclose(pooled[1], hidden[1, 1:5].mean(0))
    changed_cls = hidden.clone()
    changed_cls[:, 0] += 100.0
    assert torch.equal(pool_tokens(changed_cls, mask), pooled)
    changed_sep = hidden.clone()
    changed_sep[0, 2] += 100.0
    assert not torch.allclose(pool_tokens(changed_sep, mask)[0], pooled[0])
    changed_pad = hidden.clone()
    changed_pad[0, 3:] += 100.0
    assert torch.equal(pool_tokens(changed_pad, mask), pooled)


def test_video_encoding_ignores_padding_and_places_sep_after_the_last_second():
    model = _model()
    feats = torch.randn(1, 3, 12)
    alone = model.encode_video(feats, torch.ones(1, 3, dtype=torch.bool))
    # The same 3-second clip padded to 6 slots with garbage after it, beside a full clip.
    padded = torch.randn(2, 6, 12) * 50
    padded[0, :3] = feats[0]
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
    batch = model.encode_video(padded, mask)
    assert torch.allclose(batch[0], alone[0], atol=1e-5)
    # [SEP] at slot 4 (after three seconds): its state is the last one pooled.
    hidden, full = model.video_hidden(padded, mask)
    assert full[0].tolist() == [True] * 5 + [False] * 3
    table = model.video_encoder.get_input_embeddings().weight
    with torch.no_grad():
        tokens = model.token_mlp(feats[0])
        manual_in = torch.cat([table[1:2], tokens, table[2:3]])[None]  # [CLS] s0 s1 s2 [SEP]
        manual = model.video_encoder(inputs_embeds=manual_in).last_hidden_state
    assert torch.allclose(hidden[0, :5], manual[0], atol=1e-5)
    assert torch.allclose(batch[0], manual[0, 1:].mean(0), atol=1e-5)


def test_video_mask_with_holes_is_rejected():
    model = _model()
    with pytest.raises(ValueError, match="video_mask"):
        model.encode_video(torch.randn(1, 3, 12), torch.tensor([[True, False, True]]))


def test_text_encoder_loads_from_a_local_folder(tmp_path: Path):
    torch.manual_seed(1)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "moves"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
        ),
        add_pooling_layer=False,
    ).eval()
    bert.save_pretrained(tmp_path)
    model = build_videoclip(
        VideoClipConfig(text_encoder=tmp_path, video_layers=2, d_in=12),
        vocab_size=len(vocab),
        cls_id=2,
        sep_id=3,
    ).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0]])
    mask = ids != 0
    reference = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert torch.allclose(model.encode_text(ids, mask), reference[:, 1:5].mean(1), atol=1e-5)
    # The video tower starts from the text BERT's first layers and its [CLS]/[SEP] rows.
    video = model.video_encoder
    assert len(video.encoder.layer) == 2
    assert torch.equal(
        video.encoder.layer[1].output.dense.weight, bert.encoder.layer[1].output.dense.weight
    )
    assert torch.equal(
        video.embeddings.word_embeddings.weight[1], bert.embeddings.word_embeddings.weight[2]
    )


def test_missing_text_encoder_folder_names_the_key(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"model\.videoclip\.text_encoder"):
        build_videoclip(VideoClipConfig(text_encoder=tmp_path / "nope"), 10, 2, 3)


def test_shared_switch_uses_one_transformer():
    separate, shared = _model(), _model(shared=True)
    assert shared.shared and not hasattr(shared, "video_encoder")
    n_sep = sum(p.numel() for p in separate.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    assert n_shared < n_sep
    out = shared.encode_video(torch.randn(2, 4, 12), torch.ones(2, 4, dtype=torch.bool))
    assert out.shape == (2, 32)


def test_loss_matches_a_naive_infonce_and_trains_both_towers():
    logits = torch.randn(5, 5)
    target = torch.arange(5)
    naive_t2v = -torch.log_softmax(logits, 1)[target, target].mean()
    naive_v2t = -torch.log_softmax(logits, 0)[target, target].mean()
    assert torch.allclose(contrastive_loss(logits), (naive_t2v + naive_v2t) / 2)
    assert torch.allclose(contrastive_loss(logits, text_to_video_only=True), naive_t2v)

    model = _model().train()
    batch = {
        "video_feats": torch.randn(4, 5, 12),
        "video_mask": torch.ones(4, 5, dtype=torch.bool),
        "input_ids": torch.randint(5, 50, (4, 7)),
        "text_mask": torch.ones(4, 7, dtype=torch.bool),
    }
    out = VideoClipObjective()(model, batch)
    assert out["logits"].shape == (4, 4)
    # τ = 1: the logits are the raw dot products of the pooled features.
    model.eval()
    with torch.no_grad():
        t = model.encode_text(batch["input_ids"], batch["text_mask"])
        v = model.encode_video(batch["video_feats"], batch["video_mask"])
        again = VideoClipObjective()(model, batch)
    assert torch.allclose(again["logits"], t @ v.T, atol=1e-5)
    target = torch.arange(4)
    expected = (F.cross_entropy(t @ v.T, target) + F.cross_entropy(v @ t.T, target)) / 2
    assert torch.allclose(again["loss"], expected, atol=1e-5)
    out["loss"].backward()
    assert model.token_mlp.net[0].weight.grad.abs().sum() > 0
    assert model.text_encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    backbone, new = model.param_groups()
    assert backbone == [] and len(new) == len(list(model.parameters()))


def test_feature_standardisation_makes_the_model_blind_to_an_affine_input_change():
    model = _model()
    x = torch.randn(2, 5, 12)
    mask = torch.ones(2, 5, dtype=torch.bool)
    reference = model.encode_video(x, mask)
    mean, std = torch.linspace(-3, 3, 12), torch.linspace(0.01, 5, 12)
    model.token_mlp.set_feature_stats(mean, std)
    assert torch.allclose(model.encode_video(x * std + mean, mask), reference, atol=1e-4)
    assert not torch.allclose(model.encode_video(x, mask), reference, atol=1e-2)
    # The statistics are buffers: they travel with the weights.
    state = model.state_dict()
    assert torch.equal(state["token_mlp.feature_mean"], mean)
