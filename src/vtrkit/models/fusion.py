"""Cross-modal fusion transformer of CLIP2TV's video–text matching head (SPEC §2, vtm).

Input sequence per (text, video) pair: [CLS; word tokens; frame tokens], each token plus a learned
modality-type embedding (text or video) so the shared attention can tell the two streams apart.
Attention is bidirectional; padded words and padded frames are masked out as keys. The CLS output
goes through a linear layer to two logits: index 0 "no match", index 1 "match".

Shapes: P pairs, Nw word slots, Nf frame slots, D width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vtrkit.models.temporal import ResidualAttentionBlock

TEXT_TYPE = 0
VIDEO_TYPE = 1


class FusionTransformer(nn.Module):
    """Pre-LN transformer over [CLS; words; frames] with a 2-way match head.

    The blocks are the temporal encoder's CLIP-style residual attention blocks (QuickGELU, SDPA),
    so the whole model uses one attention implementation.

    Args:
        width: token width D (the CLIP embedding width, so word and frame features enter as is).
        layers: number of encoder layers (default 4).
        heads: attention heads (default 8); must divide ``width``.
    """

    def __init__(self, width: int, layers: int = 4, heads: int = 8) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(
                f"model.clip2tv.vtm_heads ({heads}) must divide the embedding width ({width})"
            )
        self.width = width
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.type_embedding = nn.Embedding(2, width)
        nn.init.normal_(self.type_embedding.weight, std=0.02)
        if layers < 1:
            raise ValueError(f"model.clip2tv.vtm_layers must be at least 1, got {layers}")
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)

    def forward(
        self, words: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor
    ) -> Tensor:
        """Match logits for P (text, video) pairs.

        Args:
            words: [P, Nw, D] word features of each pair's text.
            word_mask: [P, Nw] bool, True at real tokens.
            frames: [P, Nf, D] frame features of each pair's video.
            frame_mask: [P, Nf] bool, True at real frames.

        Returns:
            [P, 2] logits (column 1 = match).
        """
        num_pairs = words.shape[0]
        dtype = self.cls.dtype
        cls = self.cls.expand(num_pairs, 1, self.width)
        words = words.to(dtype) + self.type_embedding.weight[TEXT_TYPE]
        frames = frames.to(dtype) + self.type_embedding.weight[VIDEO_TYPE]
        tokens = torch.cat([cls, words, frames], dim=1)
        keep = torch.cat(
            [
                torch.ones(num_pairs, 1, dtype=torch.bool, device=words.device),
                word_mask.bool(),
                frame_mask.bool(),
            ],
            dim=1,
        )
        for block in self.blocks:
            tokens = block(tokens, keep)
        return self.head(self.norm(tokens[:, 0]))
