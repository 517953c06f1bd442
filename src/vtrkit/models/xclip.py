"""X-CLIP (SPEC §1): the CLIP4Clip encoders with the multi-grained X-CLIP head.

Shapes: B batch, T texts, V videos, Nw word slots, Nf frame slots, D width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vtrkit.models.base import TextFeatures, VideoFeatures
from vtrkit.models.meanpool import Clip4Clip
from vtrkit.models.pooling import masked_mean
from vtrkit.models.temporal import TemporalEncoder
from vtrkit.models.xclip_head import XClipHead


class XClip(Clip4Clip):
    """X-CLIP: video v from the temporal encoder + masked mean; per-frame features F for the head
    taken before the temporal encoder (released code) or after it (``frames_after_temporal``).

    Args:
        towers: CLIP towers.
        temporal: the temporal encoder or None (ablation "without temporal encoder").
        head: the X-CLIP head (its ``cfg`` holds the switches).
    """

    def __init__(
        self, towers: nn.Module, temporal: TemporalEncoder | None, head: XClipHead
    ) -> None:
        super().__init__(towers, temporal)
        self.head = head

    def _video_features(self, clip: Tensor, seq: Tensor, video_mask: Tensor) -> VideoFeatures:
        """video [V, D] from the temporal output and the head's frames [V, Nf, D] (CLIP features,
        or the temporal output with ``frames_after_temporal``), both unit-norm; used by
        ``encode_video`` and ``video_from_frame_features`` alike."""
        per_frame = seq if self.head.cfg.frames_after_temporal else clip
        return VideoFeatures(
            masked_mean(seq, video_mask), F.normalize(per_frame, dim=-1), video_mask
        )

    def similarity(
        self, text: TextFeatures, video: VideoFeatures, text_block: int | None = None
    ) -> Tensor:
        """λ · X-CLIP score [T, V]. The video side (G v, L F) is computed once per call and texts
        are streamed in blocks of ``text_block`` (None: sized to bound memory), so passing all
        texts at once is the cheapest way to score a large set; the result does not depend on the
        block size."""
        prepared = self.head.prepare(video.video, video.frames, video.mask)
        scores = self.head(text.sentence, text.words, text.mask, prepared, text_block)
        return self.logit_scale.exp() * scores
