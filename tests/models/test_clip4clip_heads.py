"""CLIP4Clip's seqLSTM and tightTransf heads (SPEC §7) against straightforward reference
computations written from the released code, on a tiny random CLIP in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official_reference import (
    ARCH,
    CAPTIONS,
    NF,
    NW,
    D,
    S,
    openai_block,
    residual_block,
    tf_layer_norm,
)

from vtrkit.config import BackboneConfig, DataConfig, ModelConfig, TightConfig
from vtrkit.losses.contrastive import symmetric_infonce
from vtrkit.models.build import build_model
from vtrkit.models.seqlstm import SeqLstmEncoder

torch.set_num_threads(1)
DATA = DataConfig(num_frames=NF, max_words=NW, image_size=S)


def build(kind: str, **kwargs):
    torch.manual_seed(0)
    model, tok = build_model(
        ModelConfig(kind=kind, backbone=BackboneConfig(arch=ARCH), **kwargs), DATA
    )
    return model.double().eval(), tok


def batch(tok, video_mask: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(3)
    ids, mask = tok(CAPTIONS, NW)
    if video_mask is None:
        video_mask = torch.arange(NF)[None] < torch.tensor([4, 2, 1])[:, None]
    frames = torch.randn(3, NF, 3, S, S, generator=g, dtype=torch.float64)
    frames[~video_mask] = 0.0
    return ids, mask, frames, video_mask


# --------------------------------------------------------------------------- seqLSTM


def lstm_reference(lstm: torch.nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """The LSTM equations, one step at a time: x [N, D] (the real frames in order) -> [N, D]."""
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    h = torch.zeros(lstm.hidden_size, dtype=x.dtype)
    c = torch.zeros_like(h)
    out = []
    for step in x:
        i, f, g, o = (w_ih @ step + w_hh @ h + b).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


def test_seqlstm_encoder_runs_over_real_frames_only_with_residual() -> None:
    torch.manual_seed(0)
    enc = SeqLstmEncoder(16).double()
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    # A prefix, a gap in the middle, and a single frame at the end.
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]]).bool()
    with torch.no_grad():
        got = enc(frames, mask)
        for v in range(3):
            real = mask[v].nonzero().squeeze(1)
            want = lstm_reference(enc.lstm, frames[v, real]) + frames[v, real]
            torch.testing.assert_close(got[v, real], want, rtol=0, atol=1e-12)
            torch.testing.assert_close(got[v, ~mask[v]], frames[v, ~mask[v]])
        # Padded slots never enter the recurrence.
        noisy = frames.clone()
        noisy[~mask] = 50 * torch.randn_like(noisy[~mask])
        torch.testing.assert_close(enc(noisy, mask)[mask], got[mask], rtol=0, atol=1e-12)


def test_seqlstm_model_pools_lstm_outputs_like_meanp() -> None:
    model, tok = build("seqLSTM")
    ids, mask, frames, video_mask = batch(tok)
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        video = model.encode_video(frames, video_mask)
        clip = model.towers.encode_image(frames.flatten(0, 1)).view(3, NF, D)
        pooled = []
        for v in range(3):
            real = clip[v, video_mask[v]]
            out = lstm_reference(model.temporal.lstm, real) + real
            mean = F.normalize(out, dim=-1).mean(0)
            pooled.append(mean / mean.norm())
        want_video = torch.stack(pooled)
        torch.testing.assert_close(video.video, want_video, rtol=0, atol=1e-10)
        logits = model.similarity(text, video)
        want = model.logit_scale.exp() * F.normalize(text.sentence, dim=-1) @ want_video.T
        torch.testing.assert_close(logits, want, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- tightTransf


def tight_reference(model, ids, mask, frames, video_mask, tight: TightConfig) -> torch.Tensor:
    """Every pair through the official CrossModel + similarity_dense, one pair at a time."""
    cross = model.cross
    blocks = [openai_block(b) for b in cross.blocks]
    heads = tight.heads or D // 64
    _, words = model.towers.encode_text(ids, mask)  # raw projected token states
    clip = model.towers.encode_image(frames.flatten(0, 1)).view(frames.shape[0], NF, D)
    out = torch.zeros(ids.shape[0], frames.shape[0], dtype=torch.float64)
    for t in range(ids.shape[0]):
        n = int(mask[t].sum())
        if tight.text_tokens == "sentence":
            text, text_mask = words[t, n - 1][None], torch.ones(1, dtype=torch.bool)
        else:
            text, text_mask = words[t], mask[t]
        for v in range(frames.shape[0]):
            x = torch.cat([text, clip[v]])
            x = x + cross.position.weight[: x.shape[0]]
            if tight.type_embedding:
                types = torch.cat([torch.zeros(len(text)), torch.ones(NF)]).long()
                x = x + cross.type_embedding.weight[types]
            key_mask = torch.cat([text_mask, video_mask[v]])[None]
            x = x[None]
            for w in blocks:
                x = residual_block(w, x, key_mask, heads)
            first = tf_layer_norm(x[0, 0], cross.pool_norm.weight, cross.pool_norm.bias)
            pooled = cross.pool_dense(first)
            pooled = pooled * torch.sigmoid(1.702 * pooled)
            out[t, v] = cross.score(pooled)
    return out


@pytest.mark.parametrize(
    "tight",
    [
        TightConfig(layers=2),
        TightConfig(layers=1, heads=2, text_tokens="words", type_embedding=True),
    ],
    ids=["released-code", "words-and-type-embedding"],
)
def test_tight_transformer_matches_pairwise_reference(tight: TightConfig) -> None:
    model, tok = build("tightTransf", tight=tight)
    with torch.no_grad():  # a trained-looking score layer, so logits are not all near zero
        model.cross.score.weight.normal_(std=0.5)
    ids, mask, frames, video_mask = batch(tok)
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        video = model.encode_video(frames, video_mask)
        got = model.similarity(text, video)
        want = tight_reference(model, ids, mask, frames, video_mask, tight)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        assert want.std() > 1e-3  # the pairs score differently
        torch.testing.assert_close(model.similarity(text, video, text_block=1), got)
        # The first stage of a search: the meanP pooled feature of the raw frames.
        clip = video.frames
        mean = (F.normalize(clip, dim=-1) * video_mask[..., None]).sum(1)
        torch.testing.assert_close(video.video, F.normalize(mean, dim=-1))


def test_tight_transformer_initialises_from_clip_text_and_trains_end_to_end() -> None:
    model, tok = build("tightTransf")
    towers = model.towers
    torch.testing.assert_close(model.cross.position.weight, towers.text_positional_embedding)
    for block, layer in zip(model.cross.blocks, towers.text_layers, strict=False):
        for name, tensor in layer.state_dict().items():
            assert torch.equal(block.state_dict()[name], tensor), name
    fresh, _ = build("tightTransf", tight=TightConfig(init_from_clip=False))
    assert not torch.allclose(fresh.cross.position.weight, towers.text_positional_embedding)
    model.train()
    ids, mask, frames, video_mask = batch(tok)
    logits = model.similarity(model.encode_text(ids, mask), model.encode_video(frames, video_mask))
    symmetric_infonce(logits).backward()
    backbone, new = model.param_groups()
    assert {id(p) for p in backbone} == {id(p) for p in towers.parameters()}
    assert {id(p) for p in new} == {id(p) for p in model.cross.parameters()}
    for name, p in model.cross.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert towers.model.visual_projection.weight.grad.abs().sum() > 0
    assert towers.logit_scale.grad is None  # the released score does not use λ


def test_tight_transformer_rejects_too_long_joint_sequences() -> None:
    cfg = ModelConfig(kind="tightTransf", backbone=BackboneConfig(arch=ARCH))
    cfg.tight.text_tokens = "words"
    model, tok = build_model(cfg, DataConfig(num_frames=70, max_words=NW, image_size=S))
    ids, mask = tok(CAPTIONS[:1], NW)
    video_mask = torch.ones(1, 70, dtype=torch.bool)
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        video = model.encode_video(torch.zeros(1, 70, 3, S, S), video_mask)
        with pytest.raises(ValueError, match="num_frames"):
            model.similarity(text, video)
