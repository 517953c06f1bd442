"""CLIP4Clip (SPEC §0): CLIP towers, optional temporal encoder, masked mean, cosine × λ.

``meanP`` is this model without a temporal encoder, ``seqTransf`` with one. X-CLIP and CLIP2TV
reuse its text/video encoding and parameter grouping.

Shapes: B batch, T texts, V videos, Nw word slots, Nf frame slots, S image size, D width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vtrkit.losses.contrastive import gather_with_grad, symmetric_infonce
from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures
from vtrkit.models.pooling import masked_mean
from vtrkit.models.temporal import TemporalEncoder


class Clip4Clip(RetrievalModel):
    """CLIP4Clip dual encoder.

    Args:
        towers: CLIP towers (``ClipTowers``); its ``logit_scale`` is the model's λ = exp(·).
        temporal: the seqTransf encoder, or None for meanP.
    """

    def __init__(self, towers: nn.Module, temporal: TemporalEncoder | None = None) -> None:
        super().__init__()
        self.towers = towers
        self.temporal = temporal

    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        """The towers' logit scale: trained at the backbone learning rate with the towers."""
        return self.towers.logit_scale

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> TextFeatures:
        """input_ids [T, Nw] long, text_mask [T, Nw] bool -> normalised sentence [T, D], words
        [T, Nw, D]."""
        sentence, words = self.towers.encode_text(input_ids, text_mask)
        return TextFeatures(F.normalize(sentence, dim=-1), F.normalize(words, dim=-1), text_mask)

    def encode_frames(self, frames: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Run the frame tower once over all Nf slots (padded ones are zero images), then the
        temporal encoder.

        Args:
            frames: [V, Nf, 3, S, S] normalised pixels.
            video_mask: [V, Nf] bool, True at real frames; each video needs one.

        Returns:
            (clip [V, Nf, D], temporal [V, Nf, D]): the CLIP frame features and the temporal
            encoder's output (the same tensor when there is none), both un-normalised. As in the
            released code, the temporal encoder sees the raw CLIP features.
        """
        if frames.dim() != 5 or video_mask.shape != frames.shape[:2]:
            raise ValueError(
                f"encode_video expects frames [V,Nf,3,S,S] and video_mask [V,Nf]; got "
                f"{tuple(frames.shape)} and {tuple(video_mask.shape)}"
            )
        if not bool(video_mask.any(dim=1).all()):
            raise ValueError(
                "encode_video: a video has no real frame (video_mask all False); the dataset "
                "should skip videos that decode to nothing"
            )
        v, nf = frames.shape[:2]
        clip = self.towers.encode_image(frames.flatten(0, 1)).view(v, nf, -1)
        seq = clip if self.temporal is None else self.temporal(clip, video_mask)
        return clip, seq

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        """frames [V, Nf, 3, S, S], video_mask [V, Nf] -> video [V, D] (masked mean of the
        temporal output) and frames [V, Nf, D] (the normalised temporal output), both unit-norm."""
        _, seq = self.encode_frames(frames, video_mask)
        return VideoFeatures(masked_mean(seq, video_mask), F.normalize(seq, dim=-1), video_mask)

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        """λ · cosine(sentence, video): [T, V] (one matrix product; ``text_block`` is unused)."""
        return self.logit_scale.exp() * (text.sentence @ video.video.T)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Symmetric InfoNCE over the global batch.

        Returns ``loss`` (scalar), ``logits`` [B, B] (global batch, λ applied) and
        ``logit_scale`` (λ = exp(logit_scale), detached, for logging).
        """
        text = self.encode_text(batch["input_ids"], batch["text_mask"])
        video = self.encode_video(batch["frames"], batch["video_mask"])
        sentence = gather_with_grad(text.sentence)
        pooled = gather_with_grad(video.video)
        logits = self.logit_scale.exp() * (sentence @ pooled.T)
        return {
            "loss": symmetric_infonce(logits),
            "logits": logits,
            "logit_scale": self.logit_scale.detach().exp(),
        }

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(CLIP towers including logit_scale, everything else)."""
        backbone = list(self.towers.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]
