"""CLIP4Clip (SPEC §0): CLIP towers, optional temporal encoder, masked mean, cosine × λ.

``meanP`` is this model without a temporal encoder, ``seqTransf`` with the temporal transformer
and ``seqLSTM`` with the LSTM encoder (:mod:`vtrkit.models.seqlstm`). X-CLIP and CLIP2TV reuse its
text/video encoding and parameter grouping.

Shapes: B batch, T texts, V videos, Nw word slots, Nf frame slots, S image size, D width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures
from vtrkit.models.pooling import masked_mean
from vtrkit.models.seqlstm import SeqLstmEncoder
from vtrkit.models.temporal import TemporalEncoder


class Clip4Clip(RetrievalModel):
    """CLIP4Clip dual encoder.

    Args:
        towers: CLIP towers (``ClipTowers``); its ``logit_scale`` is the model's λ = exp(·).
        temporal: the seqTransf encoder, the seqLSTM encoder, or None for meanP.
    """

    def __init__(
        self, towers: nn.Module, temporal: TemporalEncoder | SeqLstmEncoder | None = None
    ) -> None:
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

    def encode_images(self, images: Tensor) -> Tensor:
        """The frame tower alone: images [N, 3, S, S] normalised pixels -> CLIP frame features
        [N, D], un-normalised. Each image's feature depends on that image only, so an index build
        encodes every sampled frame once and builds all the windows holding it from the result."""
        return self.towers.encode_image(images)

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
        _check_has_real_frame(video_mask)
        v, nf = frames.shape[:2]
        clip = self.encode_images(frames.flatten(0, 1)).view(v, nf, -1)
        return clip, self._temporal(clip, video_mask)

    def _temporal(self, clip: Tensor, video_mask: Tensor) -> Tensor:
        return clip if self.temporal is None else self.temporal(clip, video_mask)

    def video_from_frame_features(self, clip: Tensor, video_mask: Tensor) -> VideoFeatures:
        """The rest of :meth:`encode_video`: CLIP frame features clip [V, Nf, D] (from
        :meth:`encode_images`; padded slots should hold a zero image's feature, as in
        :meth:`encode_video`, although real outputs do not depend on them) and video_mask [V, Nf]
        -> the same VideoFeatures ``encode_video`` gives for those frames."""
        if clip.dim() != 3 or video_mask.shape != clip.shape[:2]:
            raise ValueError(
                f"video_from_frame_features expects clip [V,Nf,D] and video_mask [V,Nf]; got "
                f"{tuple(clip.shape)} and {tuple(video_mask.shape)}"
            )
        _check_has_real_frame(video_mask)
        return self._video_features(clip, self._temporal(clip, video_mask), video_mask)

    def _video_features(self, clip: Tensor, seq: Tensor, video_mask: Tensor) -> VideoFeatures:
        """video [V, D] (masked mean of the temporal output) and frames [V, Nf, D] (the
        normalised temporal output), both unit-norm."""
        return VideoFeatures(masked_mean(seq, video_mask), F.normalize(seq, dim=-1), video_mask)

    def encode_video(self, frames: Tensor, video_mask: Tensor) -> VideoFeatures:
        """frames [V, Nf, 3, S, S], video_mask [V, Nf] -> video [V, D] and frames [V, Nf, D]
        (see :meth:`_video_features`); equal to :meth:`video_from_frame_features` applied to
        :meth:`encode_images` of the frames."""
        clip, seq = self.encode_frames(frames, video_mask)
        return self._video_features(clip, seq, video_mask)

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        """λ · cosine(sentence, video): [T, V] (one matrix product; ``text_block`` is unused)."""
        return self.logit_scale.exp() * (text.sentence @ video.video.T)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(CLIP towers including logit_scale, everything else)."""
        backbone = list(self.towers.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


def _check_has_real_frame(video_mask: Tensor) -> None:
    if not bool(video_mask.any(dim=1).all()):
        raise ValueError(
            "encode_video: a video has no real frame (video_mask all False); the dataset "
            "should skip videos that decode to nothing"
        )
