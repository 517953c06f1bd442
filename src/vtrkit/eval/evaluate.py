"""Block-streamed retrieval evaluation: encode every video once, score blocks of texts against all
videos, then rank (SPEC §0 Metrics, §1 "Cost").

Shapes: T texts (captions), V videos, Nw word slots, Nf frame slots, D embedding width,
Q query-bank captions.

The video side (pooled and per-frame features) is computed once per video; texts are scored in
blocks of ``eval.similarity_block`` against all V videos through ``model.similarity``, so heads whose cost
grows with T×Nw×V×Nf (X-CLIP's frame–word term) never materialise more than one block at a time.
The [T, V] score matrix itself is kept (DSL normalises over all texts); see ``metrics`` for sizes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from vtrkit.config import DataConfig, EvalConfig
from vtrkit.data.records import VideoRecord
from vtrkit.eval.metrics import (
    IndexLike,
    ScoreMatrix,
    as_score_matrix,
    as_text_to_video,
    retrieval_metrics,
    text_to_video_metrics,
)
from vtrkit.eval.postprocess import dual_softmax, querybank_normalize
from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures

logger = logging.getLogger(__name__)

Tokenize = Callable[[list[str], int], tuple[Tensor, Tensor]]
"""``tokenizer(texts, max_words) -> (ids [T, Nw] long, mask [T, Nw] bool)`` (backbones.Tokenizer)."""

Batch = Mapping[str, Tensor]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def logit_scale_of(model: torch.nn.Module) -> float:
    """λ = exp(logit_scale) of a model, or 1.0 when it has none (scores are used as they are)."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return 1.0
    return float(torch.as_tensor(scale).detach().float().exp())


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    # Dropout must be off while encoding; the caller's training mode is restored afterwards.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _require(batch: Batch, keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(
            f"{what} batches need keys {list(keys)}; missing {missing} "
            "(use VideoTextDataset with the matching mode and its collate)"
        )


def encode_videos_with_index(
    model: RetrievalModel,
    loader: Iterable[Batch],
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[VideoFeatures, Tensor]:
    """Encode each video of ``loader`` once (no gradients, eval mode).

    Batches hold ``frames`` [B, Nf, 3, S, S], ``video_mask`` [B, Nf] and ``video_index`` [B]
    (the record index); a ``None`` batch (all its videos failed to decode) is skipped. Returns features of the V encoded videos, rows sorted by record index,
    and those indices [V] long (videos that failed to decode are absent).
    """
    dev = torch.device(device) if device is not None else model_device(model)
    parts: list[VideoFeatures] = []
    indices: list[Tensor] = []
    with _eval_mode(model):
        for batch in tqdm(loader, desc="videos", unit="batch", disable=not progress):
            if batch is None:  # every video of the batch failed to decode (see data.collate)
                continue
            _require(batch, ("frames", "video_mask", "video_index"), "video")
            feats = model.encode_video(batch["frames"].to(dev), batch["video_mask"].to(dev))
            parts.append(feats)
            indices.append(batch["video_index"].reshape(-1).long().cpu())
    if not parts:
        raise ValueError("no video could be encoded: the video loader is empty")
    index = torch.cat(indices)
    if index.unique().numel() != index.numel():
        raise ValueError("the video loader yielded some video_index twice; use mode='videos'")
    order = index.argsort()
    feats = VideoFeatures.cat(parts)
    order_dev = order.to(feats.video.device)
    sorted_feats = VideoFeatures(
        feats.video[order_dev], feats.frames[order_dev], feats.mask[order_dev]
    )
    return sorted_feats, index[order]


def encode_videos(
    model: RetrievalModel,
    loader: Iterable[Batch],
    device: torch.device | str | None = None,
    progress: bool = False,
) -> VideoFeatures:
    """Features of every video in ``loader``, [V, ...] rows in ascending ``video_index`` order.

    See :func:`encode_videos_with_index` for the batch format and for which rows are present.
    """
    return encode_videos_with_index(model, loader, device, progress)[0]


def encode_texts_with_index(
    model: RetrievalModel,
    loader: Iterable[Batch],
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[TextFeatures, Tensor]:
    """Encode every caption of ``loader`` in loader order (no gradients, eval mode).

    Batches hold ``input_ids`` [B, Nw], ``text_mask`` [B, Nw] and ``video_index`` [B] (the
    record each caption describes). Returns text features [T, ...] and video_index [T] long.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    parts: list[TextFeatures] = []
    indices: list[Tensor] = []
    with _eval_mode(model):
        for batch in tqdm(loader, desc="texts", unit="batch", disable=not progress):
            if batch is None:
                continue
            _require(batch, ("input_ids", "text_mask", "video_index"), "text")
            parts.append(model.encode_text(batch["input_ids"].to(dev), batch["text_mask"].to(dev)))
            indices.append(batch["video_index"].reshape(-1).long().cpu())
    if not parts:
        raise ValueError("no caption to encode: the text loader is empty")
    return TextFeatures.cat(parts), torch.cat(indices)


def encode_texts(
    model: RetrievalModel,
    loader: Iterable[Batch],
    device: torch.device | str | None = None,
    progress: bool = False,
) -> TextFeatures:
    """Features [T, ...] of every caption in ``loader``, in loader order."""
    return encode_texts_with_index(model, loader, device, progress)[0]


def encode_captions(
    model: RetrievalModel,
    tokenizer: Tokenize,
    captions: Sequence[str],
    max_words: int,
    block: int = 256,
    device: torch.device | str | None = None,
) -> TextFeatures:
    """Tokenize and encode plain caption strings (e.g. a QB-Norm query bank), [Q, ...]."""
    if not captions:
        raise ValueError("no captions to encode")
    dev = torch.device(device) if device is not None else model_device(model)
    parts: list[TextFeatures] = []
    with _eval_mode(model):
        for start in range(0, len(captions), block):
            ids, mask = tokenizer(list(captions[start : start + block]), max_words)
            parts.append(model.encode_text(ids.to(dev), mask.to(dev)))
    return TextFeatures.cat(parts)


def streamed_similarity(
    model: RetrievalModel,
    text: TextFeatures,
    video: VideoFeatures,
    block: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Scores [T, V] float32 on the CPU: blocks of ``block`` texts against all V videos
    (None: the model picks a memory-bounded block).

    Uses ``model.similarity`` (logits including λ), called once with ``text_block=block`` so
    that models with per-video work (X-CLIP's G·v and L·F) do it once for all blocks; only one
    [block, V, ...] slice of work is alive at a time. The result does not depend on ``block``.
    """
    if block is not None and block < 1:
        raise ValueError(f"text block size must be >= 1 (eval.similarity_block), got {block}")
    dev = model_device(model)
    num_texts, num_videos = len(text), len(video)
    with _eval_mode(model), torch.no_grad():
        if progress:
            logger.info("scoring %d texts against %d videos", num_texts, num_videos)
        logits = model.similarity(text.to(dev), video.to(dev), text_block=block)
    if logits.shape != (num_texts, num_videos):
        raise ValueError(
            f"{type(model).__name__}.similarity returned {tuple(logits.shape)} for "
            f"{num_texts} texts and {num_videos} videos; expected [T, V]"
        )
    return logits.float().cpu()


def evaluate_features(
    sim: ScoreMatrix,
    text_to_video: IndexLike,
    *,
    dsl: bool = True,
    dsl_temperature: float = 100.0,
    subsets: Mapping[str, IndexLike] | None = None,
    qb_bank: ScoreMatrix | None = None,
    qb_beta: float = 20.0,
    qb_k: int = 1,
) -> dict[str, Any]:
    """Metrics of a finished score matrix (pure; reused by re-ranking paths such as CLIP2TV's).

    sim: [T, V] scores; text_to_video: [T] ground-truth columns. ``dsl_temperature`` and
    ``qb_beta`` apply to ``sim`` as given (pass ``value / λ`` for logits, see ``postprocess``).
    subsets: name -> video columns; captions of those videos are the queries, all videos the
    candidates (a subset whose videos have no caption is left out, with a warning). qb_bank: optional [Q, V] bank scores enabling QB-Norm (text→video keys only).

    Returns ``{"raw": metrics, "dsl": metrics (when dsl), "qb_norm": t2v metrics (when
    qb_bank is given), "num_texts": T, "num_videos": V, "subsets": {name: raw metrics}}``.
    """
    s = as_score_matrix(sim)
    idx = as_text_to_video(text_to_video, s.shape[0], s.shape[1])
    results: dict[str, Any] = {"raw": retrieval_metrics(s, idx)}
    if dsl:
        results["dsl"] = retrieval_metrics(
            dual_softmax(s, dsl_temperature, dim=0),
            idx,
            v2t_sim=dual_softmax(s, dsl_temperature, dim=1),
        )
    if qb_bank is not None:
        normalised = querybank_normalize(s, qb_bank, beta=qb_beta, k=qb_k)
        results["qb_norm"] = text_to_video_metrics(normalised, idx)
    results["num_texts"] = int(s.shape[0])
    results["num_videos"] = int(s.shape[1])
    results["subsets"] = {}
    for name, cols in (subsets or {}).items():
        cols_t = torch.as_tensor(cols).long().reshape(-1)
        if not torch.isin(idx, cols_t).any():
            logger.warning("subset %r: none of its videos has a caption; not reported", name)
            continue
        results["subsets"][name] = retrieval_metrics(s, idx, query_videos=cols_t)
    return results


def with_default_window(
    records: Sequence[VideoRecord], window: tuple[float, float] | None
) -> list[VideoRecord]:
    """Records with ``window`` (``data.window``) filled in where a record has none of its own."""
    if window is None:
        return list(records)
    return [r if r.window is not None else dataclasses.replace(r, window=window) for r in records]


def load_subsets(path: str | Path) -> dict[str, list[str]]:
    """Read a subsets file: JSON ``{name: [video_id, ...]}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"subsets file not found: {path} (check eval.subsets)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()
    ):
        raise ValueError(f"{path}: expected a mapping of subset name to a list of video ids")
    return data


def subset_columns(
    subsets: Mapping[str, Sequence[str]], video_ids: Sequence[str]
) -> dict[str, list[int]]:
    """Map subset video ids to gallery columns; ids not in the gallery are dropped (logged)."""
    column = {vid: i for i, vid in enumerate(video_ids)}
    out: dict[str, list[int]] = {}
    for name, ids in subsets.items():
        cols = [column[v] for v in ids if v in column]
        if len(cols) < len(ids):
            logger.warning(
                "subset %r: %d of %d video ids are not in the evaluated gallery",
                name,
                len(ids) - len(cols),
                len(ids),
            )
        if not cols:
            logger.warning("subset %r has no video in the gallery; it is not reported", name)
            continue
        out[name] = cols
    return out


@dataclasses.dataclass
class EncodedRecords:
    """Every video and caption of some records encoded once, aligned for scoring.

    video: [V, ...] features of the videos that decoded; text: [T, ...] features of their captions;
    text_to_video: [T] gallery column of each caption's video; gallery_ids: [V] video ids;
    num_failed: videos that failed to decode (their captions are dropped from the queries).
    """

    video: VideoFeatures
    text: TextFeatures
    text_to_video: Tensor
    gallery_ids: list[str]
    num_failed: int


def encode_records(
    model: RetrievalModel,
    records: Sequence[VideoRecord],
    tokenizer: Tokenize,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    device: torch.device,
    progress: bool = False,
) -> EncodedRecords:
    """Decode and encode each video once (mode "videos") and each caption once (mode "texts")."""
    from vtrkit.data.dataset import VideoTextDataset, collate

    def loader(mode: str, batch_size: int) -> DataLoader:
        return DataLoader(
            VideoTextDataset.from_config(records, tokenizer, data_cfg, mode),  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=False,
            num_workers=data_cfg.num_workers,
            collate_fn=collate,
        )

    video, video_index = encode_videos_with_index(
        model, loader("videos", eval_cfg.video_batch), device, progress
    )
    text, text_video_index = encode_texts_with_index(
        model, loader("texts", eval_cfg.text_block), device, progress
    )
    # Record index -> gallery column; captions of videos that failed to decode are dropped.
    column = torch.full((len(records),), -1, dtype=torch.long)
    column[video_index] = torch.arange(len(video_index))
    text_to_video = column[text_video_index]
    kept = text_to_video >= 0
    num_failed = len(records) - len(video_index)
    if num_failed:
        logger.warning(
            "%d of %d videos failed to decode; %d captions dropped from the queries",
            num_failed,
            len(records),
            int((~kept).sum()),
        )
    if not kept.all():
        rows = kept.nonzero().squeeze(1).to(text.sentence.device)
        text = TextFeatures(text.sentence[rows], text.words[rows], text.mask[rows])
        text_to_video = text_to_video[kept]
    gallery_ids = [records[i].video_id for i in video_index.tolist()]
    return EncodedRecords(video, text, text_to_video, gallery_ids, num_failed)


def evaluate(
    model: RetrievalModel,
    records: Sequence[VideoRecord],
    tokenizer: Tokenize,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig | None = None,
    device: torch.device | str | None = None,
    *,
    subsets: Mapping[str, Sequence[str]] | None = None,
    bank_captions: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``records``: text→video and video→text retrieval.

    Every video is decoded and encoded once (``VideoTextDataset`` mode "videos", through
    ``data.frame_cache`` when set, ``data.window`` for records without a window), every caption
    once (mode "texts"); scores come from :func:`streamed_similarity` in blocks of
    ``eval_cfg.similarity_block`` texts. Videos that fail to decode leave the gallery and their
    captions leave the queries (counted in ``num_failed_videos``).

    subsets: name -> video ids (default: the file named by ``eval_cfg.subsets``, if any).
    bank_captions: QB-Norm query bank (required when ``eval_cfg.qb_norm``), e.g. training captions.
    Returns the dict of :func:`evaluate_features` plus ``num_failed_videos``.
    """

    eval_cfg = eval_cfg if eval_cfg is not None else EvalConfig()
    dev = torch.device(device) if device is not None else model_device(model)
    if eval_cfg.qb_norm and not bank_captions:
        raise ValueError(
            "eval.qb_norm is on but no query bank was given: pass bank_captions (e.g. the "
            "training captions) or set eval.qb_norm=false"
        )
    if subsets is None and eval_cfg.subsets is not None:
        subsets = load_subsets(eval_cfg.subsets)
    records = with_default_window(records, data_cfg.window)

    enc = encode_records(model, records, tokenizer, data_cfg, eval_cfg, dev, progress)
    text, video, text_to_video = enc.text, enc.video, enc.text_to_video

    sim = streamed_similarity(model, text, video, eval_cfg.similarity_block, progress)
    scale = logit_scale_of(model)
    bank = None
    if eval_cfg.qb_norm and bank_captions:
        bank_text = encode_captions(
            model, tokenizer, bank_captions, data_cfg.max_words, eval_cfg.text_block, dev
        )
        bank = streamed_similarity(model, bank_text, video, eval_cfg.similarity_block, progress)
    gallery_ids = enc.gallery_ids
    results = evaluate_features(
        sim,
        text_to_video,
        dsl=eval_cfg.dsl,
        dsl_temperature=eval_cfg.dsl_temperature / scale,
        subsets=subset_columns(subsets, gallery_ids) if subsets else None,
        qb_bank=bank,
        qb_beta=eval_cfg.qb_beta / scale,
        qb_k=eval_cfg.qb_k,
    )
    results["num_failed_videos"] = enc.num_failed
    return results
