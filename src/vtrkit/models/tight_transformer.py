"""CLIP4Clip's ``tightTransf`` similarity calculator (SPEC §7): a cross-encoder over each pair.

For a (text, video) pair the joint sequence is [text tokens; CLIP frame features], plus a learned
position embedding over the joint sequence (and, as a switch, a text/video type embedding); a
stack of pre-LN residual attention blocks (LayerNorm eps 1e-12, padded positions masked as keys)
runs over it; the output at the first text position passes LayerNorm, a D×D linear layer and
QuickGELU (the official ``CrossPooler``), then a linear layer to one logit. This follows the
released code (``module_cross.CrossModel`` + ``similarity_dense``): the text is the sentence
feature as a single token by default, features enter un-normalised, the position table and blocks
are initialised from CLIP's text tower, and the type embedding is off (commented out there).

The logit is the score itself: λ is not applied (the released code does not), so
``similarity`` returns the linear layer's output. Training pairs every text of the global batch
with every video (the B×B matrix takes the §0 loss, as for the other heads).

Evaluation scores every pair (T×V cross-encoder passes, streamed in blocks of texts), which is
affordable for small galleries. An index ranks by the pooled video feature (the masked mean of
the CLIP frames, i.e. meanP) and re-ranks its top-K with the cross-encoder: that is how search
uses this head on a large collection.

Shapes: T texts, V videos, P pairs, Lt text tokens (1 or Nw), Nw word slots, Nf frame slots,
S image size, D width.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures
from vtrkit.models.pooling import masked_mean
from vtrkit.models.temporal import (
    LAYER_NORM_EPS,
    ClipTextLayers,
    QuickGELU,
    ResidualAttentionBlock,
    copy_clip_text_layers,
    default_heads,
)

_TOKEN_BUDGET = 1 << 16
"""Default cap on pairs × joint-sequence tokens per block of texts in :meth:`similarity`."""

TextTokens = Literal["sentence", "words"]


class CrossEncoder(nn.Module):
    """The joint transformer with its pooler and the one-logit score layer.

    Args:
        width: D.
        layers: residual attention blocks (4 in the released code).
        heads: attention heads; None: width // 64.
        max_positions: rows of the joint position table (CLIP's 77); Lt + Nf must fit.
        type_embedding: add a learned two-value (text 0, video 1) type embedding.
    """

    def __init__(
        self,
        width: int,
        layers: int = 4,
        heads: int | None = None,
        max_positions: int = 77,
        type_embedding: bool = False,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("the tightTransf cross-encoder needs at least one layer")
        heads = default_heads(width, heads)
        if width % heads:
            raise ValueError(
                f"model.tight.heads={heads} does not divide the embedding width {width}; "
                "pick a divisor"
            )
        self.width = width
        self.max_positions = max_positions
        self.position = nn.Embedding(max_positions, width)
        self.type_embedding = nn.Embedding(2, width) if type_embedding else None
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        self.pool_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.pool_dense = nn.Linear(width, width)
        self.pool_act = QuickGELU()
        self.score = nn.Linear(width, 1)
        self._init_fresh()

    @torch.no_grad()
    def _init_fresh(self) -> None:
        """The released code's initialisation: N(0, 0.02) weights, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def init_from_clip(self, towers: ClipTextLayers) -> int:
        """Position table from CLIP's text positional embedding and blocks from text layers
        0..L-1 where the shapes match (the released code's initialisation). Returns the number
        of blocks copied."""
        return copy_clip_text_layers(self.position, self.blocks, towers, "tightTransf")

    def forward(
        self, text: Tensor, text_mask: Tensor, frames: Tensor, frame_mask: Tensor
    ) -> Tensor:
        """One logit per pair.

        Args:
            text: [P, Lt, D] text tokens; text_mask: [P, Lt] bool (True = real; the first must
                be real, it is the pooled position).
            frames: [P, Nf, D] frame features; frame_mask: [P, Nf] bool (True = real frame).

        Returns:
            [P] logits.
        """
        x = torch.cat([text, frames], dim=1)
        length = x.shape[1]
        if length > self.max_positions:
            raise ValueError(
                f"tightTransf: {text.shape[1]} text tokens + {frames.shape[1]} frames exceed the "
                f"{self.max_positions} joint positions; lower data.num_frames or use "
                "model.tight.text_tokens=sentence"
            )
        x = x + self.position.weight[:length].to(x.dtype)
        if self.type_embedding is not None:
            types = torch.cat(
                [text_mask.new_zeros(text_mask.shape), frame_mask.new_ones(frame_mask.shape)],
                dim=1,
            ).long()
            x = x + self.type_embedding(types).to(x.dtype)
        key_mask = torch.cat([text_mask, frame_mask], dim=1)
        for block in self.blocks:
            x = block(x, key_mask)
        pooled = self.pool_act(self.pool_dense(self.pool_norm(x[:, 0])))
        return self.score(pooled).squeeze(-1)


class TightTransformer(RetrievalModel):
    """CLIP4Clip with the tightTransf cross-encoder.

    ``encode_text`` gives the normalised sentence (for a first-stage search) and the *raw*
    projected token states as ``words``; ``encode_video`` gives the meanP pooled feature as
    ``video`` and the *raw* CLIP frame features as ``frames``: the cross-encoder consumes raw
    features, as the released code does.

    Args:
        towers: CLIP towers (``ClipTowers``).
        cross: the cross-encoder.
        text_tokens: ``sentence`` (the end-token feature as one token, released code) or
            ``words`` (all Nw token states with the text padding mask).
    """

    def __init__(
        self, towers: nn.Module, cross: CrossEncoder, text_tokens: TextTokens = "sentence"
    ) -> None:
        super().__init__()
        if text_tokens not in ("sentence", "words"):
            raise ValueError(
                f"model.tight.text_tokens must be sentence or words, got {text_tokens!r}"
            )
        self.towers = towers
        self.cross = cross
        self.text_tokens = text_tokens

    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        """The towers' logit scale: kept (and clamped) with the towers, unused by the score."""
        return self.towers.logit_scale

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> TextFeatures:
        """input_ids [T, Nw], text_mask [T, Nw] -> normalised sentence [T, D] and raw token
        states [T, Nw, D]."""
        sentence, words = self.towers.encode_text(input_ids, text_mask)
        return TextFeatures(F.normalize(sentence, dim=-1), words, text_mask)

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        """frames [V, Nf, 3, S, S], video_mask [V, Nf] -> pooled video [V, D] (unit norm) and
        the raw CLIP frame features [V, Nf, D]."""
        if frames.dim() != 5 or video_mask.shape != frames.shape[:2]:
            raise ValueError(
                f"encode_video expects frames [V,Nf,3,S,S] and video_mask [V,Nf]; got "
                f"{tuple(frames.shape)} and {tuple(video_mask.shape)}"
            )
        v, nf = frames.shape[:2]
        clip = self.towers.encode_image(frames.flatten(0, 1)).view(v, nf, -1)
        return VideoFeatures(masked_mean(clip, video_mask), clip, video_mask)

    def text_sequence(self, text: TextFeatures) -> tuple[Tensor, Tensor]:
        """The text part of the joint sequence: ([T, Lt, D], [T, Lt] bool)."""
        if self.text_tokens == "words":
            return text.words, text.mask
        lengths = text.mask.sum(dim=1)
        rows = torch.arange(text.words.shape[0], device=text.words.device)
        tokens = text.words[rows, lengths - 1][:, None]  # the end token's raw feature
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        """Cross-encoder logit of every pair: [T, V] (no λ). Texts are scored in blocks of
        ``text_block`` (None: sized so a block holds about 65k joint tokens); the result does
        not depend on the block size."""
        tokens, tmask = self.text_sequence(text)
        t, lt, d = tokens.shape
        v, nf = video.frames.shape[:2]
        if text_block is None:
            text_block = max(1, _TOKEN_BUDGET // max(1, v * (lt + nf)))
        rows = []
        for start in range(0, t, text_block):
            stop = min(t, start + text_block)
            b = stop - start
            pair_text = tokens[start:stop, None].expand(b, v, lt, d).reshape(b * v, lt, d)
            pair_tmask = tmask[start:stop, None].expand(b, v, lt).reshape(b * v, lt)
            pair_frames = video.frames[None].expand(b, v, nf, d).reshape(b * v, nf, d)
            pair_fmask = video.mask[None].expand(b, v, nf).reshape(b * v, nf)
            rows.append(self.cross(pair_text, pair_tmask, pair_frames, pair_fmask).view(b, v))
        return torch.cat(rows) if rows else tokens.new_zeros(0, v)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(CLIP towers including logit_scale, the cross-encoder)."""
        backbone = list(self.towers.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]
