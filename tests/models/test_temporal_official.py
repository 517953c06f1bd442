"""The temporal transformer computes what the official TransformerClip computes: LayerNorm eps
1e-12 and width // 64 heads (SPEC §0, §7), checked against a direct re-statement in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official_reference import openai_block, tf_layer_norm, transformer_clip

from vtrkit.config import ModelConfig
from vtrkit.models.build import build_temporal
from vtrkit.models.temporal import LAYER_NORM_EPS, TemporalEncoder

torch.set_num_threads(1)
CLIP_VARIANCE = 0.13
"""Per-dimension variance of CLIP ViT-B frame features."""


def _encoder(width: int, layers: int, heads: int | None = None, seed: int = 0) -> TemporalEncoder:
    torch.manual_seed(seed)
    enc = TemporalEncoder(width, heads, layers).double()
    with torch.no_grad():  # non-trivial norms and positions, as after training
        for block in enc.blocks:
            for ln in (block.layer_norm1, block.layer_norm2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.normal_(std=0.1)
        enc.frame_position.weight.normal_(std=0.01)
    return enc


def _frames(width: int, scale: float, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(3, 12, width, generator=g, dtype=torch.float64) * scale
    mask = torch.arange(12)[None] < torch.tensor([12, 7, 2])[:, None]
    return frames, mask


def _reference(enc: TemporalEncoder, frames, mask, heads: int, eps: float) -> torch.Tensor:
    blocks = [openai_block(b) for b in enc.blocks]
    return transformer_clip(frames, mask, enc.frame_position.weight, blocks, heads, eps)


def test_layer_norm_is_a_direct_eps_1e12_layer_norm_at_clip_scale() -> None:
    enc = _encoder(512, 1)
    x, _ = _frames(512, CLIP_VARIANCE**0.5)
    ln = enc.blocks[0].layer_norm1
    assert ln.eps == LAYER_NORM_EPS == 1e-12
    direct = torch.nn.LayerNorm(512, eps=1e-12).double()
    direct.load_state_dict(ln.state_dict())
    with torch.no_grad():
        got = ln(x)
        torch.testing.assert_close(got, direct(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(got, tf_layer_norm(x, ln.weight, ln.bias), rtol=0, atol=1e-12)
        # The change is visible at this scale: CLIP's eps 1e-5 moves the output by about 1e-5.
        old = F.layer_norm(x, (512,), ln.weight, ln.bias, 1e-5)
        assert 1e-6 < (old - got).abs().max().item() < 1e-3


@pytest.mark.parametrize("scale", [CLIP_VARIANCE**0.5, 0.1 * CLIP_VARIANCE**0.5])
def test_encoder_matches_official_transformer_clip(scale: float) -> None:
    enc = _encoder(512, 2)
    assert enc.heads == 8  # 512 // 64
    frames, mask = _frames(512, scale)
    with torch.no_grad():
        got = enc(frames, mask)
        want = _reference(enc, frames, mask, heads=8, eps=1e-12)
        with_clip_eps = _reference(enc, frames, mask, heads=8, eps=1e-5)
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-10)
    # eps 1e-5 would have been a measurable error, larger when the features are smaller.
    gap = (with_clip_eps - want)[mask].abs().max().item()
    assert gap > (1e-5 if scale > 0.1 else 1e-3), gap


def test_heads_default_to_width_over_64() -> None:
    """A smaller official model (D = 128) runs 2 heads; the old fixed 8 scores it wrongly."""
    frames, mask = _frames(128, CLIP_VARIANCE**0.5, seed=4)
    enc = _encoder(128, 2, seed=3)
    assert enc.heads == 2
    eight = TemporalEncoder(128, 8, 2).double()
    eight.load_state_dict(enc.state_dict())
    with torch.no_grad():
        want = _reference(enc, frames, mask, heads=2, eps=1e-12)
        torch.testing.assert_close(enc(frames, mask)[mask], want[mask], rtol=0, atol=1e-10)
        assert (eight(frames, mask) - want)[mask].abs().max() > 1e-3


def test_build_temporal_takes_the_heads_switch_or_width_over_64() -> None:
    towers = type("Towers", (), {"text_layers": [], "text_positional_embedding": torch.zeros(1)})
    default = build_temporal(ModelConfig(temporal_layers=1), 256, towers)
    assert default is not None and default.heads == 4
    assert build_temporal(ModelConfig(temporal_layers=1, temporal_heads=2), 256, towers).heads == 2
    assert build_temporal(ModelConfig(temporal_layers=1), 32, towers).heads == 1
    with pytest.raises(ValueError, match="temporal_heads=3"):
        build_temporal(ModelConfig(temporal_layers=1, temporal_heads=3), 256, towers)
