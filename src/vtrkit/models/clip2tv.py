"""CLIP2TV (SPEC §2): video–text alignment (vta) and a matching head (vtm) for re-ranking.

The model is composed, not re-implemented: ``vta`` is the seqTransf CLIP4Clip dual encoder (its
``encode_text``, ``encode_video``, ``similarity`` and ``logit_scale`` are CLIP2TV's) and ``fusion``
the cross-modal matching transformer. Its training objective (vta + vtm on hard negatives + SD, with
the SD teacher) lives in :mod:`vtrkit.train.clip2tv_objective`; the model holds no teacher.

Inference ranks by vta; :meth:`Clip2TV.rerank` re-orders each query's top-K by
``vta_logit/λ + w_rr · p_match``.

Shapes: T texts, V videos, P pairs, K re-ranked candidates, Nw, Nf, D.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor, nn

from vtrkit.config import Clip2TVConfig
from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures
from vtrkit.models.fusion import FusionTransformer

log = logging.getLogger(__name__)

MATCH_BLOCK = 1024
"""Pairs scored by the fusion transformer at once in :meth:`Clip2TV.match_probability`."""


class Clip2TV(RetrievalModel):
    """CLIP2TV around a seqTransf CLIP4Clip model.

    Args:
        vta: the dual encoder (a seqTransf CLIP4Clip model); its features must be D wide.
        embed_dim: D, the width of its word and frame features (the fusion width).
        cfg: the ``model.clip2tv`` switches.
    """

    def __init__(self, vta: RetrievalModel, embed_dim: int, cfg: Clip2TVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vta = vta
        self.fusion = (
            FusionTransformer(embed_dim, cfg.vtm_layers, cfg.vtm_heads) if cfg.vtm else None
        )

    # The logit scale is the vta model's own parameter (clamped by the training loop through it).
    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        return self.vta.logit_scale

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> TextFeatures:
        return self.vta.encode_text(input_ids, text_mask)

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        return self.vta.encode_video(frames, video_mask)

    def encode_images(self, images: Tensor) -> Tensor:
        return self.vta.encode_images(images)

    def video_from_frame_features(
        self, frame_features: Tensor, video_mask: Tensor
    ) -> VideoFeatures:
        return self.vta.video_from_frame_features(frame_features, video_mask)

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        """vta logits [T, V] (λ included); re-ranking is a separate step (:meth:`rerank`)."""
        return self.vta.similarity(text, video, text_block=text_block)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        backbone, new = self.vta.param_groups()
        if self.fusion is not None:
            new = [*new, *self.fusion.parameters()]
        return backbone, new

    @torch.no_grad()
    def rerank_scores(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """[T, K] scores of every pair as search re-ranks them: ``vta/λ + w_rr · p_match`` with
        the matching head (SPEC §2), the vta logits without it."""
        sim = self.similarity(text, video).float()
        if self.fusion is None:
            return sim
        t, k = sim.shape
        pairs = torch.stack(
            [torch.arange(t).repeat_interleave(k), torch.arange(k).repeat(t)], dim=1
        )
        p_match = self.match_probability(text, video, pairs).float().view(t, k)
        return sim / self.logit_scale.exp().float() + float(self.cfg.w_rr) * p_match.to(sim.device)

    def match_probability(self, text: TextFeatures, video: VideoFeatures, pairs: Tensor) -> Tensor:
        """p(match) of the fusion head for given (text, video) pairs.

        Args:
            text: [T, ...] text features; video: [V, ...] video features.
            pairs: [P, 2] long, each row (text index, video index).

        Returns:
            [P] float32 probabilities in [0, 1], scored in blocks of ``MATCH_BLOCK`` pairs.
        """
        if self.fusion is None:
            raise ValueError(
                "match_probability needs the vtm head; this model was built with "
                "model.clip2tv.vtm=false"
            )
        if pairs.dim() != 2 or pairs.shape[1] != 2:
            raise ValueError(
                f"pairs must be [P, 2] (text, video) indices, got {tuple(pairs.shape)}"
            )
        device = next(self.fusion.parameters()).device
        out = []
        for start in range(0, pairs.shape[0], MATCH_BLOCK):
            block = pairs[start : start + MATCH_BLOCK]
            t = block[:, 0].to(text.words.device)
            v = block[:, 1].to(video.frames.device)
            match_logits = self.fusion(
                text.words[t].to(device),
                text.mask[t].to(device),
                video.frames[v].to(device),
                video.mask[v].to(device),
            )
            out.append(torch.softmax(match_logits.float(), dim=-1)[:, 1])
        if not out:
            return torch.empty(0, device=device)
        return torch.cat(out)

    def rerank(
        self,
        sim: Tensor,
        text: TextFeatures,
        video: VideoFeatures,
        k: int,
        w_rr: float,
        direction: Literal["t2v", "v2t"] = "t2v",
    ) -> Tensor:
        """Re-rank each query's top-K candidates by ``vta_logit/λ + w_rr · p_match``.

        Args:
            sim: [T, V] vta logits (λ included), e.g. from ``evaluate.streamed_similarity``.
            text, video: the features ``sim`` was computed from (rows and columns in order).
            k: candidates re-ranked per query (all candidates when k exceeds their number).
            w_rr: weight of the match probability; 0 reproduces the vta ranking.
            direction: "t2v" re-ranks videos per text row; "v2t" re-ranks texts per video column.

        Returns:
            [T, V] float64 scores for ranking in ``direction``: the top-K of each query hold their
            combined score, every other candidate its ``vta_logit/λ``. With w_rr >= 0 a combined
            score never drops below its own vta score, so the candidates beyond the top-K stay
            below it in vta order; w_rr = 0 returns ``vta_logit/λ`` itself (ties included). A
            negative w_rr shifts the rest of a row below its lowest combined score.
        """
        if sim.shape != (len(text), len(video)):
            raise ValueError(
                f"sim {tuple(sim.shape)} does not match {len(text)} texts × {len(video)} videos"
            )
        if k < 1:
            raise ValueError(f"re-ranking needs k >= 1 (model.clip2tv.rerank_k), got {k}")
        scale = self.logit_scale.detach().double().exp().cpu()
        base = sim.detach().double().cpu() / scale
        scores = base if direction == "t2v" else base.t()
        num_queries, num_candidates = scores.shape
        k = min(k, num_candidates)
        top = scores.topk(k, dim=1).indices  # [Q, K]
        query = torch.arange(num_queries).repeat_interleave(k)
        candidate = top.reshape(-1)
        pairs = (
            torch.stack([query, candidate], 1)
            if direction == "t2v"
            else torch.stack([candidate, query], 1)
        )
        p_match = self.match_probability(text, video, pairs).double().cpu().view(num_queries, k)
        combined = scores.gather(1, top) + w_rr * p_match
        in_top = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
        rest_max = scores.masked_fill(in_top, float("-inf")).max(dim=1, keepdim=True).values
        gap = rest_max - combined.min(dim=1, keepdim=True).values
        # Only a negative w_rr can pull a re-ranked score below a candidate outside the top-K; a
        # per-row constant shift then keeps the rest in vta order (float64 keeps float32 scores
        # distinct) and strictly below.
        shift = torch.where(gap >= 0, gap + 1.0, torch.zeros_like(gap)) if w_rr < 0 else 0.0
        out = (scores - shift).scatter_(1, top, combined)
        return out if direction == "t2v" else out.t()
