"""Feature containers and the interface every retrieval model implements.

Shapes: T texts, V videos, Nw word slots, Nf frame slots, D embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TextFeatures:
    """Encoded texts.

    sentence: [T, D] L2-normalised sentence features (end-token state, projected).
    words:    [T, Nw, D] L2-normalised projected features at every position.
    mask:     [T, Nw] bool, True at real tokens (start and end tokens included).
    """

    sentence: Tensor
    words: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.sentence.shape[0]

    def slice(self, start: int, stop: int) -> TextFeatures:
        return TextFeatures(
            self.sentence[start:stop], self.words[start:stop], self.mask[start:stop]
        )

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.sentence.to(device), self.words.to(device), self.mask.to(device))

    @staticmethod
    def cat(parts: list[TextFeatures]) -> TextFeatures:
        return TextFeatures(
            torch.cat([p.sentence for p in parts]),
            torch.cat([p.words for p in parts]),
            torch.cat([p.mask for p in parts]),
        )


@dataclass
class VideoFeatures:
    """Encoded videos, computed once per video and reused against every text block.

    video:  [V, D] L2-normalised pooled video feature.
    frames: [V, Nf, D] L2-normalised per-frame features the model's head uses.
    mask:   [V, Nf] bool, True at real frames.
    """

    video: Tensor
    frames: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.video.shape[0]

    def slice(self, start: int, stop: int) -> VideoFeatures:
        return VideoFeatures(self.video[start:stop], self.frames[start:stop], self.mask[start:stop])

    def to(self, device: torch.device | str) -> VideoFeatures:
        return VideoFeatures(self.video.to(device), self.frames.to(device), self.mask.to(device))

    @staticmethod
    def cat(parts: list[VideoFeatures]) -> VideoFeatures:
        return VideoFeatures(
            torch.cat([p.video for p in parts]),
            torch.cat([p.frames for p in parts]),
            torch.cat([p.mask for p in parts]),
        )


class RetrievalModel(nn.Module):
    """Interface shared by CLIP4Clip, X-CLIP and CLIP2TV: encoders + similarity.

    Training objectives are separate objects (:mod:`vtrkit.train.objectives`).

    Batches are dicts with ``frames`` [B, Nf, 3, S, S] float, ``video_mask`` [B, Nf] bool,
    ``input_ids`` [B, Nw] long, ``text_mask`` [B, Nw] bool and ``caption_key`` [B] long (equal
    keys mean identical captions).
    """

    logit_scale: nn.Parameter

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> TextFeatures:
        raise NotImplementedError

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        raise NotImplementedError

    def encode_images(self, images: Tensor) -> Tensor:
        """images [N, 3, S, S] normalised -> per-image features [N, D] of the frame tower alone."""
        raise NotImplementedError

    def video_from_frame_features(
        self, frame_features: Tensor, video_mask: Tensor
    ) -> VideoFeatures:
        """frame_features [V, Nf, D] from :meth:`encode_images` (padded slots: a zero image's
        feature), video_mask [V, Nf] -> what :meth:`encode_video` gives for those frames."""
        raise NotImplementedError

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        """Logits [T, V], already multiplied by λ = exp(logit_scale).

        Any per-video work is done once per call and texts are scored in blocks of
        ``text_block`` (None: the model's own memory-bounded choice); the result does not depend
        on the block size, so scoring all texts in one call is the cheapest way to evaluate.
        """
        raise NotImplementedError

    def rerank_scores(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """Scores [T, V] of every pair by the model's finest scorer, used to re-rank a first
        stage's candidates (search, evaluation); by default :meth:`similarity` itself."""
        return self.similarity(text, video)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new parameters), trained at the two learning rates of SPEC §0."""
        raise NotImplementedError

    def clamp_logit_scale(self, max_value: float = 4.6052) -> None:
        """Clamp logit_scale to at most ln(100), called after every optimiser step."""
        with torch.no_grad():
            self.logit_scale.clamp_(max=max_value)
