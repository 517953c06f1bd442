"""The five-line Python API: load a trained model, encode videos and texts, score them.

    from vtrkit import load_model, encode_videos, encode_texts
    model = load_model("runs/demo")
    videos = encode_videos(model, ["a.mp4", "b.mp4"])
    texts = encode_texts(model, ["a red circle moves left"])
    scores = similarity(model, texts, videos)                # [T, V]

``load_model`` returns the same :class:`~vtrkit.index.ModelEncoder` an index is built with, so
features computed here and features stored in an index agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vtrkit.data.decode import load_frames
from vtrkit.inference import ModelEncoder, load_backbone_for_index, load_model_for_index
from vtrkit.models.base import TextFeatures, VideoFeatures


def load_model(
    checkpoint: str | Path | None = None,
    *,
    backbone: str | Path | None = None,
    device: str = "cpu",
) -> ModelEncoder:
    """A trained vtrkit checkpoint (run folder or checkpoint folder), or with ``backbone`` a CLIP
    checkpoint used zero-shot with mean pooling. Nothing is downloaded."""
    if (checkpoint is None) == (backbone is None):
        raise ValueError(
            "give exactly one of checkpoint= (a vtrkit run) or backbone= (a CLIP file)"
        )
    if checkpoint is not None:
        return load_model_for_index(checkpoint, device=device)
    return load_backbone_for_index(backbone, device=device)


def encode_videos(
    model: ModelEncoder,
    paths: Sequence[str | Path],
    window: tuple[float, float] | None = None,
) -> VideoFeatures:
    """Decode each video with the model's sampling (``model.sampling``, SPEC §0) and encode it:
    V = len(paths).

    Raises :class:`~vtrkit.data.decode.VideoDecodeError` naming the first file that fails.
    """
    clips, masks = [], []
    for path in paths:
        frames, mask, _ = load_frames(path, model.sampling, window)
        clips.append(frames)
        masks.append(mask)
    return model.encode_video_windows(torch.stack(clips), torch.stack(masks))


def encode_texts(model: ModelEncoder, texts: Sequence[str]) -> TextFeatures:
    """Tokenize and encode T texts."""
    return model.encode_texts(list(texts))


def similarity(model: ModelEncoder, texts: TextFeatures, videos: VideoFeatures) -> torch.Tensor:
    """Scores [T, V] as search re-ranks them: the model's own head (X-CLIP multi-grained,
    λ·cosine for CLIP4Clip; for CLIP2TV with its matching head, vta/λ + w_rr·p_match)."""
    return model.rerank_scores(texts, videos)
