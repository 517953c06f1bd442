"""CLIP's image–text InfoNCE for pretraining the tiny CLIP on stills (SPEC §6).

On the global batch of B (image, caption) pairs, gathered across processes with the gradient
flowing back to each owner (:func:`vtrkit.losses.contrastive.gather_with_grad`): logits
S = λ · text @ imageᵀ [B, B] and the symmetric cross-entropy (CE(S, diag) + CE(Sᵀ, diag)) / 2,
the same loss as the single-process loss on the concatenated batch. After every optimiser step
the logit scale is clamped to at most ln 100.

Batches are dicts with ``pixels`` [b, 3, S, S], ``input_ids`` [b, Nw] long and ``text_mask``
[b, Nw] bool (b: this process's items).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vtrkit.losses.contrastive import gather_with_grad, symmetric_infonce

LOGIT_SCALE_MAX = 4.6052
"""ln 100."""


class ImageTextObjective:
    """Symmetric image–text InfoNCE over the gathered global batch (see the module docstring).

    The model offers ``encode_image``, ``encode_text`` (unit features) and ``logit_scale``
    (:class:`vtrkit.models.clip_pretrain.ClipPretrainModel`).
    """

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Returns ``loss`` (scalar), ``logits`` [B, B] (text rows, image columns, λ applied) and
        ``logit_scale`` (λ, detached, for the log)."""
        image = gather_with_grad(model.encode_image(batch["pixels"]))  # type: ignore[operator]
        text = gather_with_grad(model.encode_text(batch["input_ids"], batch["text_mask"]))  # type: ignore[operator]
        scale = model.logit_scale  # type: ignore[union-attr]
        logits = scale.exp() * (text @ image.T)
        return {
            "loss": symmetric_infonce(logits),
            "logits": logits,
            "logit_scale": scale.detach().exp(),
        }

    def after_step(self, model: nn.Module) -> None:
        """Clamp the logit scale to at most ln 100 (λ ≤ 100), as CLIP does."""
        with torch.no_grad():
            model.logit_scale.clamp_(max=LOGIT_SCALE_MAX)  # type: ignore[union-attr]
