"""The CLIP towers as an image–text model, for pretraining the tiny CLIP on still images (SPEC §6).

Every retrieval method fine-tunes an image–text pretrained CLIP; this wrapper is that CLIP
before any video training: image features (projected class token) and sentence features
(projected end token), both L2-normalised, and a learnable inverse temperature λ = exp(logit_scale)
that starts at 1/0.07 (CLIP's initialisation) and is clamped to at most 100 by the objective.

The weights are the towers' own (a Hugging Face ``CLIPModel``), so :func:`openai_state_dict`
exports exactly what a fine-tuning recipe loads through ``model.backbone.checkpoint``.
Shapes: N images, T texts, Nw word slots, S image size, D embedding width.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # the backbone package imports transformers; load it only when building
    from vtrkit.backbones.clip import ClipTowers
    from vtrkit.backbones.tokenizer import Tokenizer
    from vtrkit.config import BackboneConfig

LOGIT_SCALE_INIT = math.log(1 / 0.07)
"""CLIP's initial logit scale: λ = 1/0.07 ≈ 14.3."""


class ClipPretrainModel(nn.Module):
    """Image and text encoders of the CLIP towers with their learnable logit scale.

    Args:
        towers: ``ClipTowers``; its ``logit_scale`` is the model's (trained with the towers).
    """

    def __init__(self, towers: ClipTowers) -> None:
        super().__init__()
        self.towers = towers

    @property
    def logit_scale(self) -> nn.Parameter:
        """log λ, the towers' learnable inverse temperature (scalar parameter)."""
        return self.towers.logit_scale

    def encode_image(self, pixels: Tensor) -> Tensor:
        """pixels [N, 3, S, S] normalised -> [N, D] L2-normalised image features."""
        return F.normalize(self.towers.encode_image(pixels), dim=-1)

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> Tensor:
        """input_ids [T, Nw] long, text_mask [T, Nw] bool -> [T, D] L2-normalised sentence
        features (the end token's projected state)."""
        sentence, _ = self.towers.encode_text(input_ids, text_mask)
        return F.normalize(sentence, dim=-1)

    def similarity(self, text: Tensor, image: Tensor) -> Tensor:
        """λ · cosine: text [T, D] and image [N, D] unit features -> logits [T, N]."""
        return self.logit_scale.exp() * (text @ image.T)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(every parameter, nothing): pretraining trains the whole CLIP, logit_scale included,
        at ``optim.lr_backbone``; there are no new modules."""
        return list(self.parameters()), []

    def openai_state_dict(self) -> dict[str, Tensor]:
        """The towers' weights under OpenAI CLIP names and layouts (fused q/k/v, x @ P
        projections), float32 contiguous copies: what a ``ViT-B-32.pt`` state dict holds."""
        from vtrkit.backbones.convert import hf_to_openai

        sd = {
            k: v.detach().float().clone().contiguous()
            for k, v in self.towers.model.state_dict().items()
        }
        return hf_to_openai(sd)


def build_pretrain_model(cfg: BackboneConfig) -> tuple[ClipPretrainModel, Tokenizer]:
    """The model to pretrain and its tokenizer, from the ``model.backbone`` section.

    ``cfg.arch`` gives randomly initialised towers whose logit scale starts at ln(1/0.07); a
    ``cfg.checkpoint`` continues from those weights (its logit scale is kept).
    """
    from vtrkit.backbones.clip import build_clip

    towers, tokenizer = build_clip(cfg)
    if cfg.checkpoint is None:
        with torch.no_grad():
            towers.logit_scale.fill_(LOGIT_SCALE_INIT)
    return ClipPretrainModel(towers), tokenizer
