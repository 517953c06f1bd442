"""VideoCLIP training (SPEC §3) on the one training loop.

:func:`train_videoclip` builds the dual encoder, VideoCLIP's batch source (per-epoch
retrieval-augmented groups of overlapping pairs, :mod:`vtrkit.videoclip.source`) and its objective
(InfoNCE with τ = 1 within a group, :class:`vtrkit.train.objectives.VideoClipObjective`), and hands
them to :func:`vtrkit.train.loop.fit`, which gives VideoCLIP what every method gets: precision,
gradient accumulation, threads, the collective time-budget stop, checkpoints with exact mid-epoch
resume (the plan, its position and every process's generators), evaluation and best-checkpoint
selection. ``train.batch_size`` counts videos per optimiser step (a multiple of
``model.videoclip.cluster_k`` × processes × ``grad_accum``). The run folder gets ``last/``, ``best/``,
``tokenizer/`` and ``log.jsonl``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vtrkit.checkpoint import TOKENIZER_DIR, load_trained
from vtrkit.config import Config, VideoClipConfig
from vtrkit.data.datasets import read_dataset
from vtrkit.data.records import VideoRecord
from vtrkit.distributed import DistInfo, cleanup, setup
from vtrkit.train.loop import FitResult, fit
from vtrkit.train.objectives import VideoClipObjective
from vtrkit.videoclip.data import (
    NarratedVideo,
    PairBatcher,
    TextTokenizer,
    build_word_tokenizer,
    feature_statistics,
    load_narrated_videos,
    load_tokenizer,
)
from vtrkit.videoclip.model import VideoClipModel, build_videoclip
from vtrkit.videoclip.sampler import SamplerSettings
from vtrkit.videoclip.source import VideoClipSource, epoch_groups, global_video_vectors
from vtrkit.videoclip.zeroshot import evaluate_zero_shot

log = logging.getLogger(__name__)

EvaluateFn = Callable[[VideoClipModel], dict[str, float]]
VideoClipFitResult = FitResult
__all__ = ["epoch_groups", "global_video_vectors", "run_videoclip", "train_videoclip"]


def sampler_settings(vc: VideoClipConfig) -> SamplerSettings:
    """The pair sampler's bounds from ``model.videoclip``."""
    return SamplerSettings(
        min_text_tokens=vc.text_clip_tokens[0],
        max_text_tokens=vc.text_clip_tokens[1],
        min_video_seconds=min(vc.min_video_seconds, vc.max_video_tokens),
        max_video_seconds=vc.max_video_tokens,
        aligned=vc.aligned,
    )


def make_tokenizer(vc: VideoClipConfig, train_captions: Sequence[str]) -> TextTokenizer:
    """The configured tokenizer folder, the text encoder's own, or a vocabulary of the captions."""
    folder = vc.tokenizer or vc.text_encoder
    if folder is not None:
        return load_tokenizer(folder)
    return build_word_tokenizer(train_captions)


def model_for(vc: VideoClipConfig, tokenizer: TextTokenizer) -> VideoClipModel:
    return build_videoclip(
        vc, tokenizer.vocab_size, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    )


def train_videoclip(
    cfg: Config,
    videos: Sequence[NarratedVideo],
    tokenizer: TextTokenizer,
    info: DistInfo | None = None,
    evaluate_fn: EvaluateFn | None = None,
    selection_key: str = "t2v/R@1",
    resume: bool = False,
    progress: bool = False,
) -> tuple[VideoClipModel, FitResult]:
    """Train VideoCLIP on ``videos`` as ``cfg`` says and return the model and a summary.

    With ``resume`` the run continues from ``<train.output_dir>/last`` (mid-epoch included) and
    raises :class:`~vtrkit.videoclip.resume.ResumeMismatchError` when that checkpoint was trained
    on other data, or stopped mid-epoch under other plan settings; without a checkpoint it starts
    from scratch.
    """
    vc = cfg.model.videoclip
    info = info or DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    torch.manual_seed(cfg.train.seed)
    model = model_for(vc, tokenizer)
    if vc.standardize_features:
        model.token_mlp.set_feature_stats(*feature_statistics(videos))
    settings = sampler_settings(vc)
    batcher = PairBatcher(videos, tokenizer, settings, vc.pairs_per_video, vc.max_text_tokens)
    source = VideoClipSource(videos, batcher, cfg, info, settings)
    objective = VideoClipObjective(gather=vc.gather, text_to_video_only=vc.text_to_video_only)
    if info.is_main:
        Path(cfg.train.output_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save(Path(cfg.train.output_dir) / TOKENIZER_DIR)

    def select(result: dict[str, Any]) -> float:
        return float(result[selection_key])

    result = fit(
        cfg,
        model,
        source,
        objective,
        info,
        evaluate_fn=evaluate_fn,  # type: ignore[arg-type]
        resume=resume,
        progress=progress,
        select=select,
    )
    return model, result


def load_videoclip(path: Path, device: str = "cpu") -> tuple[VideoClipModel, TextTokenizer, Config]:
    """A trained VideoCLIP from a checkpoint or run folder, with its tokenizer and config."""
    trained = load_trained(path, device)
    if trained.config.model.kind != "videoclip":
        raise ValueError(
            f"{trained.folder}: model.kind is {trained.config.model.kind!r}, not 'videoclip'"
        )
    return trained.model, trained.tokenizer, trained.config  # type: ignore[return-value]


def _captions(records: Sequence[VideoRecord]) -> list[str]:
    return [s.text for r in records for s in r.segments] or [c for r in records for c in r.captions]


def run_videoclip(
    cfg: Config,
    device: str | None = None,
    evaluate: bool = True,
    resume: bool = False,
    info: DistInfo | None = None,
    progress: bool = False,
) -> tuple[FitResult, dict[str, float] | None]:
    """Train from a config (``model.kind: videoclip``) and evaluate zero-shot on the validation
    split (``data.val_split``, else ``data.test_split``); launch under ``torchrun`` for DDP.
    ``resume`` continues from ``<train.output_dir>/last`` (see :func:`train_videoclip`)."""
    if cfg.model.kind != "videoclip":
        raise ValueError(f"model.kind is {cfg.model.kind!r}; set model.kind=videoclip")
    vc = cfg.model.videoclip
    own_group = info is None
    info = info or setup(device)
    try:
        train_records = read_dataset(cfg.data, cfg.data.train_split)
        if cfg.train.max_train_videos is not None:
            train_records = train_records[: cfg.train.max_train_videos]
        saved_tokenizer = Path(cfg.train.output_dir) / TOKENIZER_DIR
        if resume and vc.tokenizer is None and vc.text_encoder is None and saved_tokenizer.is_dir():
            # The run's own vocabulary: the checkpoint's embedding rows are indexed by its ids.
            tokenizer = load_tokenizer(saved_tokenizer)
        else:
            tokenizer = make_tokenizer(vc, _captions(train_records))
        videos = load_narrated_videos(train_records, vc.features, tokenizer, vc.d_in)
        val_videos = None
        if evaluate:
            split = cfg.data.val_split or cfg.data.test_split
            val_records = read_dataset(cfg.data, split)
            val_videos = load_narrated_videos(val_records, vc.features, tokenizer, vc.d_in)
        log.info("VideoCLIP: %d training videos", len(videos))

        def evaluate_fn(model: VideoClipModel) -> dict[str, float]:
            assert val_videos is not None
            return evaluate_zero_shot(model, tokenizer, val_videos, vc)

        model, result = train_videoclip(
            cfg,
            videos,
            tokenizer,
            info,
            evaluate_fn if evaluate else None,
            resume=resume,
            progress=progress,
        )
        del model
    finally:
        if own_group:
            cleanup()
    return result, result.last_eval


def evaluate_videoclip_checkpoint(
    path: Path, split: str | None = None, cfg: Config | None = None, device: str = "cpu"
) -> dict[str, float]:
    """Zero-shot tasks of a trained checkpoint on ``split`` (default: the config's test split)."""
    model, tokenizer, saved = load_videoclip(path, device)
    cfg = cfg or saved
    vc = cfg.model.videoclip
    records = read_dataset(cfg.data, split or cfg.data.test_split)
    videos = load_narrated_videos(records, vc.features, tokenizer, vc.d_in)
    return evaluate_zero_shot(model, tokenizer, videos, vc)
