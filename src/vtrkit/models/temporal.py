"""Temporal transformer over frame features ("seqTransf", SPEC §0).

A learned frame-position embedding is added to the frame features, a stack of pre-LN residual
attention blocks (bidirectional, padded frames masked as keys) runs over them, and the input is
added back. Block parameters use the Hugging Face CLIP layer names so the stack can be initialised
from CLIP's text layers 0..L-1 by copying state dicts.

As in the official ``TransformerClip`` (CLIP4Clip's ``module_cross.py``, reused by X-CLIP), the
blocks' LayerNorms use eps 1e-12 (CLIP's own layers use 1e-5) and the head count defaults to
width // 64. With CLIP-scale features (per-dimension variance about 0.13) eps 1e-5 moves logits by
about 1e-4, and by about 1e-2 at a tenth of that scale.

Shapes: V videos, Nf frame slots, D width.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-12
"""LayerNorm epsilon of the official temporal transformer (TF-style LayerNorm of CLIP4Clip)."""


def default_heads(width: int, heads: int | None = None) -> int:
    """``heads`` if given, else width // 64 (at least 1), the official rule."""
    return heads if heads is not None else max(1, width // 64)


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (HF CLIP naming)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(
                f"attention width {width} is not divisible by {heads} heads; "
                "set model.temporal_heads to a divisor of the embedding width"
            )
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """x: [B, N, D]; key_mask: [B, N] bool, True at keys that may be attended to."""
        b, n, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), attn_mask=attn_mask
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """fc1 -> QuickGELU -> fc2 with CLIP's 4x hidden width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then + mlp(ln2(x)); state dict matches CLIPEncoderLayer
    (LayerNorm eps 1e-12, as the official TransformerClip)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = MLP(width)
        self.layer_norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """x: [B, N, D]; key_mask: [B, N] bool (True = real). Returns [B, N, D]."""
        x = x + self.self_attn(self.layer_norm1(x), key_mask)
        return x + self.mlp(self.layer_norm2(x))


class ClipTextLayers(Protocol):
    """What :meth:`TemporalEncoder.init_from_clip` reads from a ``ClipTowers``."""

    text_layers: nn.ModuleList | list[nn.Module]
    text_positional_embedding: Tensor


class TemporalEncoder(nn.Module):
    """seqTransf: position embedding + bidirectional transformer + residual over frames.

    Args:
        width: feature width D (the CLIP embedding width).
        heads: attention heads; None: width // 64 (the official rule; 8 for D = 512).
        layers: number of residual attention blocks (SPEC default 4; the X-CLIP paper says 3).
        max_positions: rows of the frame-position table (CLIP's 77); Nf must not exceed it.
    """

    def __init__(
        self, width: int, heads: int | None = None, layers: int = 4, max_positions: int = 77
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(
                "TemporalEncoder needs at least one layer; set model.temporal=false instead"
            )
        self.width = width
        self.max_positions = max_positions
        self.frame_position = nn.Embedding(max_positions, width)
        nn.init.normal_(self.frame_position.weight, std=0.01)
        self.heads = default_heads(width, heads)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(width, self.heads) for _ in range(layers)
        )

    def forward(self, frames: Tensor, mask: Tensor) -> Tensor:
        """frames: [V, Nf, D] CLIP frame features; mask: [V, Nf] bool (True = real frame).

        Returns [V, Nf, D] = blocks(frames + position) + frames. Padded frames are never attended
        to, so real outputs do not depend on what the padded slots hold.
        """
        nf = frames.shape[1]
        if nf > self.max_positions:
            raise ValueError(
                f"{nf} frames exceed the temporal encoder's {self.max_positions} positions; "
                f"lower data.num_frames to at most {self.max_positions}"
            )
        positions = self.frame_position.weight[:nf].to(frames.dtype)
        x = frames + positions
        for block in self.blocks:
            x = block(x, mask)
        return x + frames

    def init_from_clip(self, towers: ClipTextLayers) -> int:
        """Copy CLIP's text positional embedding and text layers 0..L-1 where the shapes match.

        Returns the number of blocks copied; mismatches are logged and keep their random init.
        """
        return copy_clip_text_layers(self.frame_position, self.blocks, towers, "temporal encoder")


@torch.no_grad()
def copy_clip_text_layers(
    positions: nn.Embedding, blocks: nn.ModuleList, towers: ClipTextLayers, what: str
) -> int:
    """Initialise a position table and residual blocks from CLIP's text tower, as the official
    code initialises its temporal and cross transformers.

    The table [P, D] takes CLIP's text positional embedding when the shapes agree; block i takes
    text layer i while its state dict has the same names and shapes. Returns the number of blocks
    copied; whatever is not copied keeps its initialisation and is logged (``what`` names it).
    """
    pos = towers.text_positional_embedding
    if tuple(pos.shape) == tuple(positions.weight.shape):
        positions.weight.copy_(pos)
    else:
        log.info(
            "%s: text positional embedding %s does not match %s; keeping a random table",
            what,
            tuple(pos.shape),
            tuple(positions.weight.shape),
        )
    copied = 0
    for block, layer in zip(blocks, towers.text_layers, strict=False):
        source = layer.state_dict()
        target = block.state_dict()
        if source.keys() != target.keys() or any(
            source[k].shape != target[k].shape for k in target
        ):
            log.info("%s: CLIP text layer %d has another shape; not copied", what, copied)
            break
        block.load_state_dict(source)
        copied += 1
    if copied < len(blocks):
        log.info("%s: %d of %d blocks initialised from CLIP text layers", what, copied, len(blocks))
    return copied
