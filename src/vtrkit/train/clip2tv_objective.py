"""CLIP2TV's training objective (SPEC §2): vta, vtm on hard negatives, similarity distillation.

On a batch (gathered across processes, B = global batch):

1. vta: logits S [B, B] = λ·cos(t_i, v_j); loss_vta = symmetric InfoNCE(S).
2. SD (``sd``): loss_sd = CE(S, q) both directions with q mixing one-hot and the teacher's softmax;
   it *replaces* InfoNCE in the total (loss_vta is still returned for logging). With
   ``sd_alpha_ramp="epoch"`` the α of step s (optimiser steps counted from 0) is
   ``sd_alpha · min(1, s / steps_per_epoch)``: 0 at the first step, ``sd_alpha`` from the second
   epoch on, as momentum distillation ramps it; ``"none"`` uses ``sd_alpha`` throughout.
3. vtm (``vtm``): one hard negative per text and per video drawn from softmax(S) over the allowed
   batch items; cross-entropy of the match head over this process's positives and negatives.
   total = (loss_sd if SD else loss_vta) + w_vtm · loss_vtm.

The objective owns the SD teacher: an EMA copy of the student's vta model (made at the first step,
so it holds the weights training really starts from, after any resume) or a frozen checkpoint
loaded here, never by the model. A CLIP2TV checkpoint therefore loads for evaluation and search
without the teacher's files.

Shapes: b this process's items, B global batch, Nw, Nf, D.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vtrkit.config import Clip2TVConfig
from vtrkit.losses.contrastive import gather_with_grad, is_distributed, symmetric_infonce
from vtrkit.losses.distillation import sd_loss
from vtrkit.losses.matching import matching_pairs, sample_hard_negatives, vtm_loss
from vtrkit.models.base import TextFeatures, VideoFeatures
from vtrkit.models.clip2tv import Clip2TV
from vtrkit.train.objectives import clamp_logit_scale, encode_gathered
from vtrkit.train.teacher import EmaTeacher, FrozenTeacher, load_frozen_teacher

log = logging.getLogger(__name__)


class Clip2TVObjective:
    """vta + w_vtm · vtm, with SD replacing vta's InfoNCE when on.

    Args:
        cfg: the ``model.clip2tv`` switches.
        teacher: a ready frozen teacher (tests, or a caller that already holds one); by default
            ``cfg.teacher == "frozen"`` loads ``cfg.teacher_checkpoint`` now and ``"ema"`` copies
            the student at the first step.
        steps_per_epoch: optimiser steps in one epoch, the length of the α ramp
            (``cfg.sd_alpha_ramp == "epoch"``; the training pipeline passes its batch source's).
            Without it the ramp cannot be placed and α is ``sd_alpha`` from the start (a warning
            says so when SD is on).
        start_step: optimiser steps already taken (a resumed run), where the step count starts.
    """

    def __init__(
        self,
        cfg: Clip2TVConfig,
        teacher: FrozenTeacher | None = None,
        steps_per_epoch: int | None = None,
        start_step: int = 0,
    ) -> None:
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.step = start_step
        """Optimiser steps taken so far (counted by :meth:`after_step`)."""
        if cfg.sd and cfg.sd_alpha_ramp == "epoch" and steps_per_epoch is None:
            log.warning(
                "model.clip2tv.sd_alpha_ramp=epoch needs the epoch length (steps_per_epoch); "
                "without it SD uses a constant alpha=%g from the first step",
                cfg.sd_alpha,
            )
        self.teacher: EmaTeacher | FrozenTeacher | None = teacher
        if cfg.sd and teacher is None and cfg.teacher == "frozen":
            if cfg.teacher_checkpoint is None:
                raise ValueError(
                    "model.clip2tv.teacher=frozen needs model.clip2tv.teacher_checkpoint "
                    "(a checkpoint folder with model.safetensors and config.yaml)"
                )
            self.teacher = load_frozen_teacher(cfg.teacher_checkpoint)

    @property
    def alpha(self) -> float:
        """SD's α for the next batch: ``sd_alpha · min(1, step / steps_per_epoch)`` under the
        epoch ramp, else ``sd_alpha``."""
        if self.cfg.sd_alpha_ramp == "none" or self.steps_per_epoch is None:
            return self.cfg.sd_alpha
        return self.cfg.sd_alpha * min(1.0, self.step / self.steps_per_epoch)

    def _ensure_teacher(self, model: Clip2TV) -> EmaTeacher | FrozenTeacher:
        if self.teacher is None:
            self.teacher = EmaTeacher(model.vta, self.cfg.ema_momentum)
            log.info("SD teacher: EMA of the student, momentum %.4f", self.cfg.ema_momentum)
        return self.teacher

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One training step's losses.

        Args:
            model: a :class:`Clip2TV` model.
            batch: ``frames`` [b, Nf, 3, S, S], ``video_mask`` [b, Nf], ``input_ids`` [b, Nw],
                ``text_mask`` [b, Nw], ``caption_key`` [b] (needed for vtm) and optionally
                ``video_index`` [b] (two captions of one video are never each other's negative).

        Returns:
            ``loss`` (total), ``logits`` [B, B] vta logits of the gathered batch, ``loss_vta``
            (plain InfoNCE), ``loss_vtm`` and ``loss_sd`` (0 when the part is off).
        """
        if not isinstance(model, Clip2TV):
            raise TypeError(f"the CLIP2TV objective trains a Clip2TV model, got {type(model)}")
        text, _, text_all, video_all = encode_gathered(model.vta, batch)
        logits = model.vta.similarity(text_all, video_all)
        loss_vta = symmetric_infonce(logits)
        zero = logits.new_zeros((), dtype=torch.float32)
        loss_sd, loss_vtm = zero, zero
        align = loss_vta
        if self.cfg.sd:
            teacher_sim = self._ensure_teacher(model).similarity(batch)
            tau = self.cfg.sd_tau if self.cfg.sd_tau is not None else 1.0 / model.logit_scale.exp()
            loss_sd = sd_loss(logits, teacher_sim, self.alpha, tau)
            align = loss_sd
        if model.fusion is not None:
            loss_vtm = self._vtm_loss(model, batch, logits, text_all, video_all, len(text))
        total = align + self.cfg.w_vtm * loss_vtm if model.fusion is not None else align
        return {
            "loss": total,
            "logits": logits,
            "loss_vta": loss_vta,
            "loss_vtm": loss_vtm,
            "loss_sd": loss_sd,
        }

    def _vtm_loss(
        self,
        model: Clip2TV,
        batch: dict[str, Tensor],
        logits: Tensor,
        text_all: TextFeatures,
        video_all: VideoFeatures,
        local: int,
    ) -> Tensor:
        """Match loss of this process's items; negatives come from the whole gathered batch."""
        assert model.fusion is not None
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
        match_logits = model.fusion(
            text_all.words[text_index],
            text_all.mask[text_index],
            video_all.frames[video_index],
            video_all.mask[video_index],
        )
        return vtm_loss(match_logits, label)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """Clamp the logit scale; move an EMA teacher toward the student; count the step."""
        self.step += 1
        clamp_logit_scale(model)
        if isinstance(self.teacher, EmaTeacher) and isinstance(model, Clip2TV):
            self.teacher.update(model.vta)
