"""Straightforward re-statements of the official CLIP4Clip / X-CLIP modules, for numeric tests.

Written from the released code's definitions (``module_cross.py``, ``until_module.py``), not
from vtrkit's: a TF-style LayerNorm with eps inside the square root, one fused ``in_proj``
attention with the additive ``(1 - mask) * -1e6`` key mask, QuickGELU MLPs. Weights are passed
in OpenAI's block layout (``attn.in_proj_weight`` ...), built from a vtrkit block by
:func:`openai_block`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtrkit.config import ClipArch

# The tiny CLIP both official-code tests use: heads = width // 64, as an official checkpoint implies.
NF, NW, S, D = 4, 8, 16, 64
ARCH = ClipArch(
    embed_dim=D,
    image_size=S,
    patch_size=8,
    vision_width=64,
    vision_layers=1,
    vision_heads=1,
    text_width=64,
    text_layers=2,
    text_heads=1,
)
CAPTIONS = ["a red circle moves left", "a dog", "two blue squares grow then shrink slowly"]


def tf_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-12) -> Tensor:
    """until_module.LayerNorm: (x - mean) / sqrt(var + eps), then the affine map."""
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    return weight * ((x - u) / torch.sqrt(s + eps)) + bias


def openai_block(block: torch.nn.Module) -> dict[str, Tensor]:
    """A vtrkit residual block's weights under OpenAI block names (fused q/k/v)."""
    a, mlp = block.self_attn, block.mlp
    return {
        "in_proj_weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
        "in_proj_bias": torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
        "out_proj_weight": a.out_proj.weight,
        "out_proj_bias": a.out_proj.bias,
        "ln_1_weight": block.layer_norm1.weight,
        "ln_1_bias": block.layer_norm1.bias,
        "ln_2_weight": block.layer_norm2.weight,
        "ln_2_bias": block.layer_norm2.bias,
        "c_fc_weight": mlp.fc1.weight,
        "c_fc_bias": mlp.fc1.bias,
        "c_proj_weight": mlp.fc2.weight,
        "c_proj_bias": mlp.fc2.bias,
    }


_OFFICIAL_BLOCK = {
    "in_proj_weight": "attn.in_proj_weight",
    "in_proj_bias": "attn.in_proj_bias",
    "out_proj_weight": "attn.out_proj.weight",
    "out_proj_bias": "attn.out_proj.bias",
    "ln_1_weight": "ln_1.weight",
    "ln_1_bias": "ln_1.bias",
    "ln_2_weight": "ln_2.weight",
    "ln_2_bias": "ln_2.bias",
    "c_fc_weight": "mlp.c_fc.weight",
    "c_fc_bias": "mlp.c_fc.bias",
    "c_proj_weight": "mlp.c_proj.weight",
    "c_proj_bias": "mlp.c_proj.bias",
}


def official_blocks(sd: dict[str, Tensor], prefix: str) -> list[dict[str, Tensor]]:
    """The blocks ``<prefix><i>.*`` of an official state dict, i = 0, 1, ..."""
    blocks = []
    while f"{prefix}{len(blocks)}.attn.in_proj_weight" in sd:
        p = f"{prefix}{len(blocks)}."
        blocks.append({name: sd[p + key] for name, key in _OFFICIAL_BLOCK.items()})
    return blocks


def residual_block(
    w: dict[str, Tensor], x: Tensor, mask: Tensor, heads: int, eps: float = 1e-12
) -> Tensor:
    """One official ResidualAttentionBlock: x [N, L, D], mask [N, L] (1 = real key)."""
    n, length, d = x.shape
    h = tf_layer_norm(x, w["ln_1_weight"], w["ln_1_bias"], eps)
    q, k, v = (h @ w["in_proj_weight"].T + w["in_proj_bias"]).chunk(3, dim=-1)

    def split(t: Tensor) -> Tensor:
        return t.reshape(n, length, heads, d // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    additive = (1.0 - mask.to(x.dtype))[:, None, None, :] * -1000000.0
    attn = torch.softmax(scores + additive, dim=-1) @ split(v)
    x = x + attn.transpose(1, 2).reshape(n, length, d) @ w["out_proj_weight"].T + w["out_proj_bias"]
    h = tf_layer_norm(x, w["ln_2_weight"], w["ln_2_bias"], eps) @ w["c_fc_weight"].T
    h = h + w["c_fc_bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ w["c_proj_weight"].T + w["c_proj_bias"]


def transformer_clip(
    frames: Tensor,
    mask: Tensor,
    positions: Tensor,
    blocks: list[dict[str, Tensor]],
    heads: int,
    eps: float = 1e-12,
) -> Tensor:
    """CLIP4Clip's seqTransf: blocks(frames + positions) + frames. frames [V, Nf, D]."""
    x = frames + positions[: frames.shape[1]]
    for w in blocks:
        x = residual_block(w, x, mask, heads, eps)
    return x + frames
