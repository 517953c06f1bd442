"""CLIP2TV (SPEC §2): video–text alignment, matching on hard negatives, similarity distillation.

The model is composed, not re-implemented: ``vta`` is the seqTransf CLIP4Clip dual encoder (its
``encode_text``, ``encode_video``, ``similarity`` and ``logit_scale`` are CLIP2TV's), ``fusion`` the
cross-modal matching transformer, and an optional teacher supplies SD targets.

Training step on a batch (gathered across processes, B = global batch):

1. vta: logits S [B, B] = λ·cos(t_i, v_j); loss_vta = symmetric InfoNCE(S).
2. SD (``sd``): loss_sd = CE(S, q) both directions with q mixing one-hot and the teacher's softmax;
   it *replaces* InfoNCE in the total (loss_vta is still returned for logging).
3. vtm (``vtm``): one hard negative per text and per video drawn from softmax(S) over the allowed
   batch items; cross-entropy of the match head over this process's positives and negatives.
   total = (loss_sd if SD else loss_vta) + w_vtm · loss_vtm.

Inference ranks by vta; :meth:`Clip2TV.rerank` re-orders each query's top-K by
``vta_logit/λ + w_rr · p_match``.

Shapes: B batch, T texts, V videos, P pairs, K re-ranked candidates, Nw, Nf, D.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vtrkit.config import Clip2TVConfig
from vtrkit.losses.contrastive import gather_with_grad, is_distributed, symmetric_infonce
from vtrkit.losses.distillation import sd_loss
from vtrkit.losses.matching import matching_pairs, sample_hard_negatives, vtm_loss
from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures
from vtrkit.models.fusion import FusionTransformer
from vtrkit.models.teacher import (
    EmaTeacher,
    FrozenTeacher,
    gather_text,
    gather_video,
    load_frozen_teacher,
)

log = logging.getLogger(__name__)

MATCH_BLOCK = 1024
"""Pairs scored by the fusion transformer at once in :meth:`Clip2TV.match_probability`."""


class Clip2TV(RetrievalModel):
    """CLIP2TV around a seqTransf CLIP4Clip model.

    Args:
        vta: the dual encoder (a seqTransf CLIP4Clip model); its features must be D wide.
        embed_dim: D, the width of its word and frame features (the fusion width).
        cfg: the ``model.clip2tv`` switches.
        teacher: a ready frozen teacher (tests, or a caller that already holds one); by default
            ``cfg.teacher == "frozen"`` loads ``cfg.teacher_checkpoint`` and ``"ema"`` copies the
            student at the first training step.
    """

    def __init__(
        self,
        vta: RetrievalModel,
        embed_dim: int,
        cfg: Clip2TVConfig,
        teacher: FrozenTeacher | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.vta = vta
        self.fusion = (
            FusionTransformer(embed_dim, cfg.vtm_layers, cfg.vtm_heads) if cfg.vtm else None
        )
        self._teacher: EmaTeacher | FrozenTeacher | None = teacher
        if cfg.sd and teacher is None and cfg.teacher == "frozen":
            if cfg.teacher_checkpoint is None:
                raise ValueError(
                    "model.clip2tv.teacher=frozen needs model.clip2tv.teacher_checkpoint "
                    "(a checkpoint folder with model.safetensors and config.yaml)"
                )
            self._teacher = load_frozen_teacher(cfg.teacher_checkpoint)

    # The logit scale is the vta model's own parameter (clamped by the training loop through it).
    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        return self.vta.logit_scale

    @property
    def teacher(self) -> EmaTeacher | FrozenTeacher | None:
        """The SD teacher (None until the first training step for the EMA kind, or without SD)."""
        return self._teacher

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> TextFeatures:
        return self.vta.encode_text(input_ids, text_mask)

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        return self.vta.encode_video(frames, video_mask)

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

    def _ensure_teacher(self) -> EmaTeacher | FrozenTeacher:
        if self._teacher is None:
            # Created lazily so the copy holds the weights the student really starts from (after
            # any checkpoint or resume loading), not those of construction time.
            self._teacher = EmaTeacher(self.vta, self.cfg.ema_momentum)
            log.info("SD teacher: EMA of the student, momentum %.4f", self.cfg.ema_momentum)
        return self._teacher

    @torch.no_grad()
    def on_step_end(self) -> None:
        """Training-loop hook after each optimiser step: move the EMA teacher toward the student."""
        if isinstance(self._teacher, EmaTeacher):
            self._teacher.update(self.vta)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One training step.

        Args:
            batch: ``frames`` [b, Nf, 3, S, S], ``video_mask`` [b, Nf], ``input_ids`` [b, Nw],
                ``text_mask`` [b, Nw], ``caption_key`` [b] (needed for vtm) and optionally
                ``video_index`` [b] (two captions of one video are never each other's negative).

        Returns:
            ``loss`` (total), ``logits`` [B, B] vta logits of the gathered batch, ``loss_vta``
            (plain InfoNCE), ``loss_vtm`` and ``loss_sd`` (0 when the part is off).
        """
        text = self.vta.encode_text(batch["input_ids"], batch["text_mask"])
        video = self.vta.encode_video(batch["frames"], batch["video_mask"])
        text_all, video_all = gather_text(text), gather_video(video)
        logits = self.vta.similarity(text_all, video_all)
        loss_vta = symmetric_infonce(logits)
        zero = logits.new_zeros((), dtype=torch.float32)
        loss_sd, loss_vtm = zero, zero
        align = loss_vta
        if self.cfg.sd:
            teacher_sim = self._ensure_teacher().similarity(batch)
            tau = self.cfg.sd_tau if self.cfg.sd_tau is not None else 1.0 / self.logit_scale.exp()
            loss_sd = sd_loss(logits, teacher_sim, self.cfg.sd_alpha, tau)
            align = loss_sd
        if self.fusion is not None:
            loss_vtm = self._vtm_loss(batch, logits, text_all, video_all, len(text))
        total = align + self.cfg.w_vtm * loss_vtm if self.fusion is not None else align
        return {
            "loss": total,
            "logits": logits,
            "loss_vta": loss_vta,
            "loss_vtm": loss_vtm,
            "loss_sd": loss_sd,
        }

    def _vtm_loss(
        self,
        batch: dict[str, Tensor],
        logits: Tensor,
        text_all: TextFeatures,
        video_all: VideoFeatures,
        local: int,
    ) -> Tensor:
        """Match loss of this process's items; negatives come from the whole gathered batch."""
        assert self.fusion is not None
        if "caption_key" not in batch:
            raise KeyError(
                "CLIP2TV vtm needs batch['caption_key'] (identical captions share a key) to keep "
                "duplicate captions out of the negatives; use VideoTextDataset's collate"
            )
        caption_key = gather_with_grad(batch["caption_key"])
        video_key = gather_with_grad(batch["video_index"]) if "video_index" in batch else None
        neg_video, neg_text = sample_hard_negatives(logits.detach(), caption_key, None, video_key)
        offset = dist.get_rank() * local if is_distributed() else 0
        rows = torch.arange(offset, offset + local, device=logits.device)
        text_index, video_index, label = matching_pairs(neg_video, neg_text, rows)
        match_logits = self.fusion(
            text_all.words[text_index],
            text_all.mask[text_index],
            video_all.frames[video_index],
            video_all.mask[video_index],
        )
        return vtm_loss(match_logits, label)

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
