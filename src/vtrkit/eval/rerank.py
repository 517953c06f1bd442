"""CLIP2TV inference (SPEC §2): rank by vta, then re-rank each query's top-K with the vtm head.

Both numbers are always reported: ``raw`` (and the usual DSL/QB-Norm rows) come from the vta
logits exactly as for any other model, ``rerank`` from the scores of :meth:`Clip2TV.rerank`
(``vta_logit/λ + w_rr · p_match`` on the top-K, vta order below). Text→video re-ranks the top-K
videos of every caption; video→text re-ranks the top-K captions of every video.

Cost: T·K + V·K fusion-transformer pairs on top of the vta evaluation.

Shapes: T texts (captions), V videos.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vtrkit.config import DataConfig, EvalConfig
from vtrkit.data.records import VideoRecord
from vtrkit.eval.evaluate import (
    IndexLike,
    Tokenize,
    encode_records,
    evaluate_features,
    load_subsets,
    logit_scale_of,
    model_device,
    streamed_similarity,
    subset_columns,
    with_default_window,
)
from vtrkit.eval.metrics import as_text_to_video, retrieval_metrics
from vtrkit.models.base import TextFeatures, VideoFeatures
from vtrkit.models.clip2tv import Clip2TV

logger = logging.getLogger(__name__)


@torch.no_grad()
def rerank_results(
    model: Clip2TV,
    sim: Tensor,
    text: TextFeatures,
    video: VideoFeatures,
    text_to_video: IndexLike,
    k: int | None = None,
    w_rr: float | None = None,
    subsets: Mapping[str, IndexLike] | None = None,
) -> dict[str, Any]:
    """Metrics of the re-ranked scores.

    Args:
        model: a CLIP2TV model with its vtm head (``model.clip2tv.vtm: true``).
        sim: [T, V] vta logits of ``text`` against ``video`` (e.g. ``streamed_similarity``).
        text_to_video: [T] ground-truth video column of each caption.
        k, w_rr: re-ranking depth and weight; None takes ``model.cfg.rerank_k`` / ``w_rr``.
        subsets: name -> video columns scored separately (as in ``evaluate_features``).

    Returns:
        ``{"rerank": metrics (t2v/..., v2t/...), "rerank_k": K, "w_rr": w,
        "rerank_subsets": {name: metrics}}``.
    """
    k = model.cfg.rerank_k if k is None else k
    w_rr = model.cfg.w_rr if w_rr is None else w_rr
    was_training = model.training
    model.eval()
    try:
        t2v = model.rerank(sim, text, video, k, w_rr, direction="t2v")
        v2t = model.rerank(sim, text, video, k, w_rr, direction="v2t")
    finally:
        model.train(was_training)
    idx = as_text_to_video(text_to_video, t2v.shape[0], t2v.shape[1])
    return {
        "rerank": retrieval_metrics(t2v, idx, v2t_sim=v2t),
        "rerank_k": k,
        "w_rr": w_rr,
        "rerank_subsets": {
            name: retrieval_metrics(t2v, idx, query_videos=cols, v2t_sim=v2t)
            for name, cols in (subsets or {}).items()
        },
    }


def evaluate_with_rerank(
    model: Clip2TV,
    records: Sequence[VideoRecord],
    tokenizer: Tokenize,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig | None = None,
    device: torch.device | str | None = None,
    *,
    k: int | None = None,
    w_rr: float | None = None,
    subsets: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a CLIP2TV model on ``records``: vta numbers plus vtm re-ranked numbers.

    Encoding and vta scoring follow :func:`vtrkit.eval.evaluate.evaluate` (each video and caption
    encoded once, texts streamed in blocks; videos that fail to decode leave the gallery and their
    captions the queries). Returns the dict of ``evaluate_features`` (``raw``, ``dsl``, ...,
    ``subsets``) updated with :func:`rerank_results` (when the model has its vtm head) and
    ``num_failed_videos``.
    """
    eval_cfg = eval_cfg if eval_cfg is not None else EvalConfig()
    dev = torch.device(device) if device is not None else model_device(model)
    if subsets is None and eval_cfg.subsets is not None:
        subsets = load_subsets(eval_cfg.subsets)
    records = with_default_window(records, data_cfg.window)

    enc = encode_records(model, records, tokenizer, data_cfg, eval_cfg, dev, progress)
    text, video, text_to_video = enc.text, enc.video, enc.text_to_video

    sim = streamed_similarity(model, text, video, eval_cfg.similarity_block, progress)
    scale = logit_scale_of(model)
    columns = subset_columns(subsets, enc.gallery_ids) if subsets else None
    results = evaluate_features(
        sim,
        text_to_video,
        dsl=eval_cfg.dsl,
        dsl_temperature=eval_cfg.dsl_temperature / scale,
        subsets=columns,
    )
    if model.fusion is not None:
        results.update(rerank_results(model, sim, text, video, text_to_video, k, w_rr, columns))
    else:
        logger.info("model.clip2tv.vtm is off: reporting the vta ranking only")
    results["num_failed_videos"] = enc.num_failed
    return results
