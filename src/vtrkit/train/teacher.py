"""Teachers for CLIP2TV's similarity distillation (SPEC §2, SD).

A teacher scores the same (gathered) training batch as the student and returns a [B, B] similarity
matrix in cosine units (its logits divided by its own λ), from which SD builds soft targets. Two
kinds:

- :class:`EmaTeacher`: an exponential-moving-average copy of the student's vta model, updated after
  every optimiser step (the default);
- :class:`FrozenTeacher`: a previously trained checkpoint, loaded read-only by
  :func:`load_frozen_teacher`.

Teachers are deliberately *not* sub-modules of the student: they are neither trained nor saved in
the student's checkpoint, so a model trained with SD loads exactly like one trained without it. They
follow the student's device on use.

Shapes: B items of the batch (of the global batch after gathering), Nw, Nf, D as elsewhere.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from vtrkit.models.base import RetrievalModel
from vtrkit.train.objectives import gather_text, gather_video

log = logging.getLogger(__name__)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _Teacher:
    """Shared scoring of a batch by a frozen retrieval model."""

    def __init__(self, model: RetrievalModel) -> None:
        self.model: RetrievalModel = _freeze(model)  # type: ignore[assignment]

    def _follow(self, device: torch.device) -> None:
        # The teacher is outside the student's module tree, so `student.to()` does not move it.
        if next(self.model.parameters()).device != device:
            self.model.to(device)

    @torch.no_grad()
    def similarity(self, batch: dict[str, Tensor]) -> Tensor:
        """Teacher similarities of the gathered batch, cosine units.

        Args:
            batch: the training batch (``frames`` [b, Nf, 3, S, S], ``video_mask`` [b, Nf],
                ``input_ids`` [b, Nw], ``text_mask`` [b, Nw]); b is this process's share.

        Returns:
            [B, B] (text i, video j) = teacher logits / teacher λ, with B the global batch.
        """
        self._follow(batch["frames"].device)
        text = gather_text(self.model.encode_text(batch["input_ids"], batch["text_mask"]))
        video = gather_video(self.model.encode_video(batch["frames"], batch["video_mask"]))
        logits = self.model.similarity(text, video)
        return logits.float() / self.model.logit_scale.exp().float()


class EmaTeacher(_Teacher):
    """Exponential-moving-average copy of a model: θ_t ← m·θ_t + (1 − m)·θ_s after each step.

    Args:
        model: the student (its vta part); it is deep-copied, the copy frozen and put in eval mode.
        momentum: m ∈ [0, 1]; 0 copies the student every update, 1 never changes the teacher.
    """

    def __init__(self, model: RetrievalModel, momentum: float = 0.995) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"model.clip2tv.ema_momentum must lie in [0, 1], got {momentum}")
        super().__init__(copy.deepcopy(model))
        self.momentum = momentum

    @torch.no_grad()
    def update(self, model: RetrievalModel) -> None:
        """Move every teacher parameter toward the student's; copy buffers as they are."""
        self._follow(next(model.parameters()).device)
        teacher_params = dict(self.model.named_parameters())
        student_params = dict(model.named_parameters())
        if teacher_params.keys() != student_params.keys():
            raise ValueError(
                "EmaTeacher.update: the student's parameters differ from the teacher's "
                "(the teacher was built from another model)"
            )
        for name, t in teacher_params.items():
            t.lerp_(student_params[name].detach().to(t.dtype), 1.0 - self.momentum)
        student_buffers = dict(model.named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(student_buffers[name])


class FrozenTeacher(_Teacher):
    """A previously trained model used as a fixed teacher (never updated)."""


def load_frozen_teacher(folder: str | Path) -> FrozenTeacher:
    """Load a checkpoint folder (``model.safetensors`` + ``config.yaml``) as a read-only teacher.

    The teacher consumes the student's batches, so it must use the same tokenizer and frame
    preprocessing (``data.max_words``, ``data.num_frames``, ``data.image_size``). Loading a
    model never loads a teacher of its own, so a CLIP2TV checkpoint trained with SD works too.

    Raises:
        FileNotFoundError: naming the folder when it holds no checkpoint.
    """
    from vtrkit.checkpoint import load_trained, resolve_checkpoint

    try:
        resolved = resolve_checkpoint(folder)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"model.clip2tv.teacher_checkpoint: {exc}; train the teacher first or set "
            "model.clip2tv.teacher=ema"
        ) from None
    trained = load_trained(resolved)
    log.info("SD teacher: frozen %s model from %s", trained.config.model.kind, resolved)
    return FrozenTeacher(trained.model)  # type: ignore[arg-type]
