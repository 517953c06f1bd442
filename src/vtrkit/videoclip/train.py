"""VideoCLIP training: epochs of retrieval-augmented batches of overlapping pairs (SPEC §3).

An epoch: (1) with ``retrieval_augment`` every training video gets a global vector, the mean over
``pairs_per_video`` sampled pairs of (pooled video + pooled text) / 2 from the current model, and
the videos are grouped by :func:`~vtrkit.videoclip.batcher.cluster_batches`; otherwise a random
permutation is cut into groups. (2) Each group of ``cluster_k`` videos becomes one batch of
``cluster_k × pairs_per_video`` fresh pairs and one optimiser step with InfoNCE (τ = 1) on that
per-process batch. Under ``torchrun`` every process computes the same groups (same seed), takes
every ``world_size``-th one and DDP averages the gradients; ``gather`` adds the other processes'
pairs as negatives.

Checkpoints and resume. ``last/`` is written at the end of every epoch, every
``train.checkpoint_every`` optimiser steps and when ``train.time_budget_s`` runs out (the names and
meaning are those of :func:`vtrkit.train.loop.fit`). With ``resume`` training continues from
``last/`` exactly where it stopped, mid-epoch included: the checkpoint holds the interrupted epoch's
batch plan, the position in it and every process's RNG states (see :mod:`vtrkit.videoclip.resume`),
so an interrupted and resumed run ends with the weights of an uninterrupted one.

The optimiser, schedule and checkpoint format are those of :mod:`vtrkit.train` (AdamW groups,
warm-up + cosine, ``model.safetensors`` + ``config.yaml``). The epoch structure differs from
:func:`vtrkit.train.loop.fit` (batches are rebuilt from the model before every epoch), hence this
loop. The run folder gets ``last/`` (and ``best/`` when an evaluation function is given),
``tokenizer/`` and ``log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vtrkit.checkpoint import load_checkpoint_config, load_weights, resolve_checkpoint
from vtrkit.config import Config, VideoClipConfig, save_config
from vtrkit.data.datasets import read_dataset
from vtrkit.data.records import VideoRecord
from vtrkit.distributed import DistInfo, barrier, broadcast_object, cleanup, setup
from vtrkit.train.checkpoint import TrainState, load_training_state, save_checkpoint
from vtrkit.train.optim import build_optimizer
from vtrkit.train.schedule import build_scheduler
from vtrkit.videoclip.batcher import cluster_batches, random_batches
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
from vtrkit.videoclip.resume import (
    DataFingerprint,
    EpochPlan,
    checkpoint_extra,
    gather_rank_states,
    plan_settings,
    read_resume_point,
)
from vtrkit.videoclip.sampler import SamplerSettings
from vtrkit.videoclip.zeroshot import evaluate_zero_shot

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
EvaluateFn = Callable[[VideoClipModel], dict[str, float]]


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


@torch.no_grad()
def global_video_vectors(
    model: VideoClipModel,
    batcher: PairBatcher,
    rng: np.random.Generator,
    videos_per_chunk: int = 16,
) -> np.ndarray:
    """[V, H]: per video, the mean over its sampled pairs of (pooled video + pooled text) / 2."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(batcher.videos)
    out = torch.zeros((n, model.hidden_size))
    counts = torch.zeros(n)
    for start in range(0, n, videos_per_chunk):
        batch = batcher.batch(range(start, min(n, start + videos_per_chunk)), rng)
        video = model.encode_video(batch["video_feats"].to(device), batch["video_mask"].to(device))
        text = model.encode_text(batch["input_ids"].to(device), batch["text_mask"].to(device))
        pair = ((video + text) / 2).float().cpu()
        out.index_add_(0, batch["video_index"], pair)
        counts.index_add_(0, batch["video_index"], torch.ones(len(pair)))
    model.train(was_training)
    return (out / counts[:, None]).numpy()


def epoch_groups(
    model: VideoClipModel, batcher: PairBatcher, vc: VideoClipConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """The epoch's groups of video indices (retrieval-augmented or random)."""
    n = len(batcher.videos)
    if not vc.retrieval_augment:
        return [b.videos for b in random_batches(n, vc.cluster_k, rng)]
    vectors = global_video_vectors(model, batcher, rng)
    return [b.videos for b in cluster_batches(vectors, vc.cluster_k, rng)]


@dataclass
class VideoClipFitResult:
    run_dir: Path
    steps: int
    epochs: int
    seconds: float
    last_eval: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)


def train_videoclip(
    cfg: Config,
    videos: Sequence[NarratedVideo],
    tokenizer: TextTokenizer,
    info: DistInfo | None = None,
    evaluate_fn: EvaluateFn | None = None,
    selection_key: str = "t2v/R@1",
    resume: bool = False,
) -> tuple[VideoClipModel, VideoClipFitResult]:
    """Train VideoCLIP on ``videos`` as ``cfg`` says (``train.epochs``, ``max_steps``,
    ``time_budget_s``, ``checkpoint_every``, ``optim.*``, ``model.videoclip.*``) and return the
    model and a summary.

    With ``resume`` the run continues from ``<train.output_dir>/last`` (mid-epoch included) and
    raises :class:`~vtrkit.videoclip.resume.ResumeMismatchError` when that checkpoint was trained
    on other data, or stopped mid-epoch under other plan settings; without a checkpoint it starts
    from scratch.
    """
    vc = cfg.model.videoclip
    info = info or DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    run_dir = Path(cfg.train.output_dir)
    torch.manual_seed(cfg.train.seed)
    model = model_for(vc, tokenizer)
    if vc.standardize_features:
        model.token_mlp.set_feature_stats(*feature_statistics(videos))
    model.to(info.device)
    settings = sampler_settings(vc)
    batcher = PairBatcher(videos, tokenizer, settings, vc.pairs_per_video, vc.max_text_tokens)
    groups_per_epoch = max(1, len(videos) // vc.cluster_k) // info.world_size
    if groups_per_epoch == 0:
        raise ValueError(
            f"{len(videos)} training videos give no batch per process for model.videoclip."
            f"cluster_k={vc.cluster_k} and {info.world_size} processes; lower cluster_k"
        )
    total = groups_per_epoch * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, total, cfg.optim.warmup)
    fingerprint = DataFingerprint.of(videos, vc.features)
    plan_key = plan_settings(cfg, info.world_size, settings)
    state = TrainState()
    # The current epoch's plan and this process's pair generator; None until the epoch starts.
    plan: EpochPlan | None = None
    pair_rng: np.random.Generator | None = None
    if resume and (run_dir / "last").exists():
        last = resolve_checkpoint(run_dir / "last")
        # Checked before any weight is loaded, so a mismatch reports the data, not tensor shapes.
        point = read_resume_point(last, fingerprint, plan_key, info.rank)
        state, _ = load_training_state(last, model, optimizer, scheduler)
        point.restore_rng()
        plan, pair_rng = point.plan, point.pair_rng()
        log.info(
            "resumed from %s at epoch %d, step %d (%d batches into the epoch)",
            last,
            state.epoch,
            state.step,
            state.batch_in_epoch,
        )
    elif resume:
        log.info("no checkpoint in %s yet: starting from scratch", run_dir)
    wrapped: nn.Module = model
    if info.enabled:
        wrapped = DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        tokenizer.save(run_dir / TOKENIZER_DIR)
    started = time.perf_counter()
    last_eval: dict[str, float] | None = None
    evaluated_at = -1
    saved_at: tuple[int, int] | None = None
    out_of_time = False
    log_file = (run_dir / "log.jsonl").open("a") if info.is_main else None

    def save_last() -> None:
        """Write ``last/`` with what an exact resume needs (a collective call: every process)."""
        nonlocal saved_at
        mid_epoch = state.batch_in_epoch > 0
        # At an epoch boundary the next epoch rebuilds its plan and generators from the seed.
        ranks = gather_rank_states(pair_rng if mid_epoch else None)
        if info.is_main:
            extra = checkpoint_extra(fingerprint, plan_key, plan if mid_epoch else None, ranks)
            save_checkpoint(run_dir / "last", model, cfg, optimizer, scheduler, state, extra)
        barrier()
        saved_at = (state.epoch, state.step)

    try:
        while state.epoch < cfg.train.epochs and state.step < total and not out_of_time:
            if plan is None or plan.epoch != state.epoch:
                # Same seed on every process, so the groups agree; the pairs differ per process.
                group_rng = np.random.default_rng([cfg.train.seed, state.epoch])
                groups = epoch_groups(model, batcher, vc, group_rng)
                groups = broadcast_object(groups)  # type: ignore[assignment]
                plan = EpochPlan(state.epoch, groups)
                pair_rng = np.random.default_rng([cfg.train.seed, state.epoch, info.rank, 1])
            assert pair_rng is not None
            mine = plan.groups[info.rank :: info.world_size][:groups_per_epoch]
            model.train()
            # A resumed epoch skips the groups the interrupted run already trained on.
            for group in mine[state.batch_in_epoch :]:
                batch = {k: v.to(info.device) for k, v in batcher.batch(group, pair_rng).items()}
                out = wrapped(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"VideoCLIP loss became {loss.item()} at step {state.step}; "
                        "lower optim.lr_new"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                optimizer.step()
                scheduler.step()
                state.step += 1
                state.batch_in_epoch += 1
                if log_file is not None and (
                    state.step % cfg.train.log_every == 0 or state.step == 1
                ):
                    record = {
                        "step": state.step,
                        "epoch": state.epoch,
                        "loss": float(loss.detach()),
                        "grad_norm": float(grad_norm),
                        "lr": scheduler.get_last_lr()[-1],
                        "pairs": len(batch["input_ids"]),
                        "time_s": time.perf_counter() - started,
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    log.info("step %d loss %.4f", state.step, record["loss"])
                if (
                    cfg.train.checkpoint_every
                    and state.step % cfg.train.checkpoint_every == 0
                    # The epoch's last step is saved right below, after the epoch's evaluation.
                    and state.batch_in_epoch < groups_per_epoch
                ):
                    save_last()
                if state.step >= total:
                    break
                if _out_of_time(cfg, started, info):
                    log.info("time budget reached at step %d", state.step)
                    out_of_time = True
                    break
            if state.batch_in_epoch >= groups_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
                plan, pair_rng = None, None
                if evaluate_fn is not None and cfg.train.eval_every_epoch:
                    last_eval = _evaluate(
                        cfg, model, evaluate_fn, state, info, run_dir, selection_key
                    )
                    evaluated_at = state.step
                    if log_file is not None:
                        log_file.write(json.dumps({"step": state.step, "eval": last_eval}) + "\n")
            if saved_at != (state.epoch, state.step):
                save_last()
        # A run stopped by max_steps or the time budget (or resumed with nothing left) ends
        # with one evaluation; the checkpoint above already holds the RNG states of before it.
        if evaluate_fn is not None and evaluated_at != state.step:
            last_eval = _evaluate(cfg, model, evaluate_fn, state, info, run_dir, selection_key)
            if log_file is not None:
                log_file.write(json.dumps({"step": state.step, "eval": last_eval}) + "\n")
    finally:
        if log_file is not None:
            log_file.close()
    result = VideoClipFitResult(
        run_dir, state.step, state.epoch, time.perf_counter() - started, last_eval, state.history
    )
    return model, result


def _out_of_time(cfg: Config, started: float, info: DistInfo) -> bool:
    """Whether ``train.time_budget_s`` is spent; rank 0's clock decides for every process."""
    budget = cfg.train.time_budget_s
    if budget is None:
        return False
    return bool(broadcast_object(time.perf_counter() - started > budget))


def _evaluate(
    cfg: Config,
    model: VideoClipModel,
    evaluate_fn: EvaluateFn,
    state: TrainState,
    info: DistInfo,
    run_dir: Path,
    key: str,
) -> dict[str, float] | None:
    result = None
    if info.is_main:
        result = evaluate_fn(model)
        model.train()
        score = float(result[key])
        state.history.append({"epoch": state.epoch, "step": state.step, key: score})
        if state.best_metric is None or score > state.best_metric:
            state.best_metric = score
            save_checkpoint(run_dir / "best", model, cfg)
    barrier()
    return result


def load_videoclip(path: Path, device: str = "cpu") -> tuple[VideoClipModel, TextTokenizer, Config]:
    """A trained VideoCLIP from a checkpoint or run folder, with its tokenizer and config."""
    folder = resolve_checkpoint(path)
    cfg = load_checkpoint_config(folder)
    if cfg.model.kind != "videoclip":
        raise ValueError(f"{folder}: model.kind is {cfg.model.kind!r}, not 'videoclip'")
    vc = cfg.model.videoclip
    tok_folder = vc.tokenizer or vc.text_encoder or folder.parent / TOKENIZER_DIR
    tokenizer = load_tokenizer(tok_folder)
    model = model_for(vc, tokenizer)
    load_weights(model, folder)
    return model.to(device).eval(), tokenizer, cfg


def _captions(records: Sequence[VideoRecord]) -> list[str]:
    return [s.text for r in records for s in r.segments] or [c for r in records for c in r.captions]


def run_videoclip(
    cfg: Config, device: str | None = None, evaluate: bool = True, resume: bool = False
) -> tuple[VideoClipFitResult, dict[str, float] | None]:
    """Train from a config (``model.kind: videoclip``) and evaluate zero-shot on the validation
    split (``data.val_split``, else ``data.test_split``); launch under ``torchrun`` for DDP.
    ``resume`` continues from ``<train.output_dir>/last`` (see :func:`train_videoclip`)."""
    if cfg.model.kind != "videoclip":
        raise ValueError(f"model.kind is {cfg.model.kind!r}; set model.kind=videoclip")
    vc = cfg.model.videoclip
    info = setup(device)
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
            cfg, videos, tokenizer, info, evaluate_fn if evaluate else None, resume=resume
        )
        del model
    finally:
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
