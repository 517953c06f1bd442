"""Training objectives: what a training step computes from a model and a batch.

A model is encoders + ``similarity``; the objective that trains it is a separate object that the
trainer builds (:func:`vtrkit.train.pipeline.build_objective`) and inference never sees. An objective is called with the
model and one micro-batch and returns ``loss`` (scalar) plus optional ``loss_<part>`` scalars for
the log; :meth:`Objective.after_step` runs after every optimiser step (the logit-scale clamp of
SPEC §0, an EMA teacher's update).

:class:`TrainingStep` binds a model and its objective into one module whose ``forward`` is the
objective, so DDP wraps a single module and sees the objective's forward pass; the objective is
not a sub-module (a teacher it holds is neither trained nor saved).

Shapes: b this process's items, B the global batch after gathering, Nw, Nf, D as elsewhere.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from vtrkit.losses.contrastive import contrastive_loss, gather_with_grad, symmetric_infonce
from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures

LOGIT_SCALE_MAX = 4.6052
"""ln 100: the logit scale is clamped to at most this after every optimiser step (SPEC §0)."""


class Objective(Protocol):
    """What a training step computes; see the module docstring."""

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]: ...

    def after_step(self, model: nn.Module) -> None: ...


class TrainingStep(nn.Module):
    """``model`` with its objective as ``forward``: the module the trainer wraps in DDP."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.__dict__["objective"] = objective  # not a sub-module: never trained or saved

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.objective(self.model, batch)


def clamp_logit_scale(model: nn.Module, max_value: float = LOGIT_SCALE_MAX) -> None:
    """Clamp ``model.logit_scale`` to at most ln 100 (a model without one is left alone)."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, Tensor):
        with torch.no_grad():
            scale.clamp_(max=max_value)


def gather_text(text: TextFeatures) -> TextFeatures:
    """Text features of the global batch in rank order (identity in one process)."""
    return TextFeatures(
        gather_with_grad(text.sentence), gather_with_grad(text.words), gather_with_grad(text.mask)
    )


def gather_video(video: VideoFeatures) -> VideoFeatures:
    """Video features of the global batch in rank order (identity in one process)."""
    return VideoFeatures(
        gather_with_grad(video.video), gather_with_grad(video.frames), gather_with_grad(video.mask)
    )


def encode_gathered(
    model: RetrievalModel, batch: dict[str, Tensor]
) -> tuple[TextFeatures, VideoFeatures, TextFeatures, VideoFeatures]:
    """(local text, local video, gathered text, gathered video) features of a frame batch."""
    text = model.encode_text(batch["input_ids"], batch["text_mask"])
    video = model.encode_video(batch["frames"], batch["video_mask"])
    return text, video, gather_text(text), gather_video(video)


class ContrastiveObjective:
    """Symmetric InfoNCE (SPEC §0) on the model's own logits over the gathered global batch.

    Trains CLIP4Clip (every head) and X-CLIP: ``logits = model.similarity(all texts, all videos)``
    [B, B] with λ applied; the loss equals the single-process loss on the concatenated batch.
    """

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        _, _, text, video = encode_gathered(model, batch)  # type: ignore[arg-type]
        logits = model.similarity(text, video)  # type: ignore[operator]
        scale = model.logit_scale.detach().exp()  # type: ignore[union-attr]
        return {"loss": symmetric_infonce(logits), "logits": logits, "logit_scale": scale}

    def after_step(self, model: nn.Module) -> None:
        clamp_logit_scale(model)


class VideoClipObjective:
    """VideoCLIP's InfoNCE with temperature 1 (SPEC §3) on this process's pairs.

    Negatives are the pairs of the same group (one retrieval-augmented batch, ``batch["group"]``
    [b]); with ``gather`` all pairs of the gathered micro-batch. ``text_to_video_only`` keeps only
    the text→video direction (fine-tuning for retrieval).
    """

    def __init__(self, gather: bool = False, text_to_video_only: bool = False) -> None:
        self.gather = gather
        self.text_to_video_only = text_to_video_only

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        text = model.encode_text(batch["input_ids"], batch["text_mask"])  # type: ignore[operator]
        video = model.encode_video(batch["video_feats"], batch["video_mask"])  # type: ignore[operator]
        if self.gather:
            text, video = gather_with_grad(text), gather_with_grad(video)
        logits = (text @ video.T).float()
        if not self.gather and "group" in batch:
            group = batch["group"]
            logits = logits.masked_fill(group[:, None] != group[None, :], float("-inf"))
        return {"loss": contrastive_loss(logits, self.text_to_video_only), "logits": logits}

    def after_step(self, model: nn.Module) -> None:
        """Nothing: VideoCLIP has no logit scale (τ = 1)."""
