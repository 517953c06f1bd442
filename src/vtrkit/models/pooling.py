"""Masked mean pooling of per-frame features into one video feature (SPEC §0, "Video feature").

Shapes: V videos, Nf frame slots, D embedding width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def masked_mean(frames: Tensor, mask: Tensor) -> Tensor:
    """Pool frames into one L2-normalised vector per video.

    Each frame is L2-normalised first (so every real frame weighs the same whatever its norm),
    then averaged over the real frames only, and the mean is L2-normalised again.

    Args:
        frames: [V, Nf, D] per-frame features (any norm).
        mask: [V, Nf] bool, True at real frames; every video needs at least one.

    Returns:
        [V, D] unit-norm video features.
    """
    if frames.dim() != 3 or mask.shape != frames.shape[:2]:
        raise ValueError(
            f"masked_mean expects frames [V,Nf,D] and mask [V,Nf]; got {tuple(frames.shape)} "
            f"and {tuple(mask.shape)}"
        )
    counts = mask.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError(
            "masked_mean: a video has no real frame (video_mask is all False); "
            "drop the video or check that decoding produced frames"
        )
    weights = mask.to(frames.dtype).unsqueeze(-1)
    summed = (F.normalize(frames, dim=-1) * weights).sum(dim=1)
    return F.normalize(summed / counts.to(frames.dtype), dim=-1)
