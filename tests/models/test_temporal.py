"""Temporal encoder: masking, residual, equivalence with CLIP text layers, initialisation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPTextConfig

from vtrkit.models.temporal import TemporalEncoder

torch.set_num_threads(1)
D, HEADS = 16, 4


def hf_text_layers(n: int, width: int = D) -> tuple[list[CLIPEncoderLayer], torch.Tensor]:
    config = CLIPTextConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_attention_heads=HEADS,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-12,  # the official temporal transformer's eps (CLIP's own is 1e-5)
    )
    config._attn_implementation = "eager"
    torch.manual_seed(11)
    layers = [CLIPEncoderLayer(config).eval() for _ in range(n)]
    for layer in layers:  # non-trivial norms so a swapped ln1/ln2 copy would show
        for ln in (layer.layer_norm1, layer.layer_norm2):
            ln.weight.data.uniform_(0.5, 1.5)
            ln.bias.data.normal_(std=0.1)
    return layers, torch.randn(77, width) * 0.1


def random_frames(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(3, 6, D, generator=g)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 1])[:, None]
    return frames, mask


def test_padded_frames_do_not_change_real_outputs() -> None:
    torch.manual_seed(0)
    enc = TemporalEncoder(D, HEADS, layers=2)
    frames, mask = random_frames()
    out = enc(frames, mask)
    changed = frames.clone()
    changed[~mask] = 100 * torch.randn_like(changed[~mask])
    torch.testing.assert_close(enc(changed, mask)[mask], out[mask], atol=1e-5, rtol=1e-5)
    # Real frames do interact (so the check above is not vacuous).
    poked = frames.clone()
    poked[0, 0] += torch.randn(D)  # not a constant shift, which LayerNorm would remove
    assert not torch.allclose(enc(poked, mask)[0, 1:], out[0, 1:], atol=1e-4)


def test_residual_and_position_with_silent_blocks() -> None:
    enc = TemporalEncoder(D, HEADS, layers=3)
    for block in enc.blocks:
        for lin in (block.self_attn.out_proj, block.mlp.fc2):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
    frames, mask = random_frames(1)
    expected = 2 * frames + enc.frame_position.weight[:6]
    torch.testing.assert_close(enc(frames, mask), expected)


def test_init_from_clip_copies_layers_and_matches_hf_forward() -> None:
    layers, pos = hf_text_layers(5)
    enc = TemporalEncoder(D, HEADS, layers=4)
    copied = enc.init_from_clip(SimpleNamespace(text_layers=layers, text_positional_embedding=pos))
    assert copied == 4
    torch.testing.assert_close(enc.frame_position.weight, pos)
    for block, layer in zip(enc.blocks, layers, strict=False):
        for name, tensor in layer.state_dict().items():
            assert torch.equal(block.state_dict()[name], tensor), name

    # Same computation as the HF layers run bidirectionally with an additive key mask (as in
    # CLIP4Clip's -1e6 mask), plus the position embedding and the outer residual.
    frames, mask = random_frames(2)
    x = frames + pos[:6]
    additive = (~mask)[:, None, None, :].float().expand(-1, 1, 6, -1) * -1e6
    with torch.no_grad():
        for layer in layers[:4]:
            x = layer(x, additive)
        got = enc(frames, mask)
    torch.testing.assert_close(got, x + frames, atol=1e-5, rtol=1e-5)


def test_init_from_clip_skips_mismatched_widths() -> None:
    layers, pos = hf_text_layers(2, width=32)
    enc = TemporalEncoder(D, HEADS, layers=2)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    assert (
        enc.init_from_clip(SimpleNamespace(text_layers=layers, text_positional_embedding=pos)) == 0
    )
    for name, tensor in enc.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="temporal_heads"):
        TemporalEncoder(D, heads=5)
    enc = TemporalEncoder(D, HEADS, layers=1, max_positions=4)
    frames, mask = random_frames()
    with pytest.raises(ValueError, match="num_frames"):
        enc(frames, mask)
