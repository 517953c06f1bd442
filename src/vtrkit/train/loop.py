"""The training loop: plain PyTorch, one process or many under ``torchrun``.

The global batch (``train.batch_size``) is split over processes and accumulation steps; each
process runs ``batch_size / (world_size * grad_accum)`` items per forward. The models gather
features across processes for the contrastive loss (every process sees the whole global batch
of negatives) and DDP averages gradients, which together give exactly the single-process gradient.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from vtrkit.checkpoint import resolve_checkpoint
from vtrkit.config import Config, save_config
from vtrkit.distributed import DistInfo, barrier
from vtrkit.train.checkpoint import TrainState, load_training_state, save_checkpoint
from vtrkit.train.optim import build_optimizer
from vtrkit.train.schedule import build_scheduler

log = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module], dict[str, Any]]


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    epochs: int
    seconds: float
    best_metric: float | None
    last_eval: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def selection_metric(metrics: dict[str, Any]) -> float:
    """Checkpoint selection score: text→video R@1 of the raw (unpost-processed) similarities."""
    return float(metrics["raw"]["t2v/R@1"])


class _SkipSampler(Sampler[int]):
    """The epoch's index order with the first ``skip`` indices removed (mid-epoch resume)."""

    def __init__(self, base: DistributedSampler, skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def _autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """Mixed-precision context for the forward pass (``train.precision``)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("train.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
    stack = ExitStack()
    stack.enter_context(torch.autocast(device_type=device.type, dtype=dtype))
    if device.type == "cpu":
        # PyTorch's CPU flash-attention kernel is slower than the plain math path in bf16 for
        # every shape measured here (forward + backward, one thread: 5x at 128x4 heads x 24
        # tokens, 1.9x at a ViT-B/32's 96x12x50); the demo's training step went 0.46 s -> 0.36 s.
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def _any_process(flag: bool, info: DistInfo) -> bool:
    """True on every process when ``flag`` is True on any: a decision to stop (the time budget)
    must be shared, or the processes that go on would wait forever in the next collective."""
    if not info.enabled:
        return flag
    value = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _equalize(batch: dict[str, Any] | None, info: DistInfo) -> dict[str, Any] | None:
    """Cut every process's batch to the smallest one; None when any process has nothing.

    A video that fails to decode is dropped by the collate function (a batch whose every video
    failed arrives as None), and the feature gather needs equal sizes on every process.
    """
    if not info.enabled:
        return batch
    size = torch.tensor([0 if batch is None else len(batch["input_ids"])], device=info.device)
    dist.all_reduce(size, op=dist.ReduceOp.MIN)
    n = int(size.item())
    if n == 0 or batch is None:
        return None
    return {k: v[:n] for k, v in batch.items()}


def _per_rank_batch(cfg: Config, info: DistInfo) -> int:
    parts = info.world_size * cfg.train.grad_accum
    if cfg.train.batch_size % parts:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by "
            f"world_size × grad_accum = {info.world_size} × {cfg.train.grad_accum}"
        )
    return cfg.train.batch_size // parts


def fit(
    cfg: Config,
    model: nn.Module,
    train_dataset: Dataset,
    collate: Callable[[list[Any]], dict[str, Any]],
    info: DistInfo,
    evaluate_fn: EvaluateFn | None = None,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` on ``train_dataset`` as ``cfg`` says; evaluate and checkpoint every epoch.

    Writes ``run_dir/last`` (resumable), ``run_dir/best`` (best selection metric), ``config.yaml``
    and ``log.jsonl`` (one JSON object per logged step and per evaluation). With ``resume`` the
    run continues from ``run_dir/last`` where it stopped, mid-epoch included.
    ``stop_after_epochs`` ends this call early without changing the schedule (used to split a run).
    """
    run_dir = Path(cfg.train.output_dir)
    started = time.perf_counter()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    per_rank = _per_rank_batch(cfg, info)
    sampler = DistributedSampler(
        train_dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=cfg.train.seed,
        drop_last=True,
    )
    micro_per_epoch = len(sampler) // per_rank
    steps_per_epoch = micro_per_epoch // cfg.train.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(train_dataset)} items) is smaller than one global batch "
            f"({cfg.train.batch_size}); lower train.batch_size"
        )
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)

    model.to(info.device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, total_steps, cfg.optim.warmup)
    state = TrainState()
    if resume and (run_dir / "last").exists():
        last = resolve_checkpoint(run_dir / "last")
        state, _ = load_training_state(last, model, optimizer, scheduler)
        log.info("resumed from %s at epoch %d, step %d", last, state.epoch, state.step)
    elif resume:
        log.info("no checkpoint in %s yet: starting from scratch", run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    wrapped: nn.Module = model
    if info.enabled:
        wrapped = DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    scaler = torch.amp.GradScaler(enabled=cfg.train.precision == "fp16")
    log_file = (run_dir / "log.jsonl").open("a") if info.is_main else None
    last_eval: dict[str, Any] | None = None
    evaluated_at = -1
    budget = cfg.train.time_budget_s
    out_of_time = False

    def write_log(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    try:
        while state.epoch < cfg.train.epochs and state.step < total_steps and not out_of_time:
            if stop_after_epochs is not None and state.epoch >= stop_after_epochs:
                break
            sampler.set_epoch(state.epoch)
            skip = state.batch_in_epoch * per_rank * cfg.train.grad_accum
            loader = DataLoader(
                train_dataset,
                batch_size=per_rank,
                sampler=_SkipSampler(sampler, skip),
                collate_fn=collate,
                num_workers=cfg.data.num_workers,
                drop_last=True,
                persistent_workers=False,
                pin_memory=info.device.type == "cuda",
            )
            model.train()
            bar = tqdm(
                total=steps_per_epoch,
                initial=state.batch_in_epoch,
                desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}",
                disable=not (progress and info.is_main),
                dynamic_ncols=True,
            )
            window_clips, window_start = 0, time.perf_counter()
            micro = 0
            for batch in loader:
                batch = _equalize(None if batch is None else _to_device(batch, info.device), info)
                if batch is None:
                    log.warning("skipping a batch in which every video failed to decode")
                    continue
                sync = (micro + 1) % cfg.train.grad_accum == 0
                ctx = wrapped.no_sync() if info.enabled and not sync else nullcontext()
                with ctx, _autocast(cfg.train.precision, info.device):
                    out = wrapped(batch)
                    loss = out["loss"] / cfg.train.grad_accum
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {state.step}; lower optim.lr_new "
                        "or use train.precision=fp32"
                    )
                scaler.scale(loss).backward()
                micro += 1
                window_clips += len(batch["input_ids"]) * info.world_size
                if not sync:
                    continue
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                model.clamp_logit_scale()
                if hasattr(model, "on_step_end"):
                    model.on_step_end()
                state.step += 1
                state.batch_in_epoch += 1
                bar.update(1)
                if state.step % cfg.train.log_every == 0 or state.step == 1:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": state.step,
                        "epoch": state.epoch + state.batch_in_epoch / steps_per_epoch,
                        "loss": float(out["loss"].detach()),
                        "lr_new": scheduler.get_last_lr()[-1],
                        "grad_norm": float(grad_norm),
                        "clips_per_s": window_clips / max(elapsed, 1e-9),
                        "time_s": time.perf_counter() - started,
                    }
                    extras = {k: float(v.detach()) for k, v in out.items() if k.startswith("loss_")}
                    record.update(extras)
                    bar.set_postfix(
                        loss=f"{record['loss']:.3f}",
                        lr=f"{record['lr_new']:.1e}",
                        clips_s=f"{record['clips_per_s']:.0f}",
                    )
                    write_log(record)
                    window_clips, window_start = 0, time.perf_counter()
                if (
                    cfg.train.checkpoint_every
                    and state.step % cfg.train.checkpoint_every == 0
                    and info.is_main
                ):
                    save_checkpoint(run_dir / "last", model, cfg, optimizer, scheduler, state)
                if budget is not None and _any_process(
                    time.perf_counter() - started > budget, info
                ):
                    log.info("time budget of %.0f s reached at step %d", budget, state.step)
                    out_of_time = True
                    break
                if state.step >= total_steps:
                    break
            bar.close()
            if state.batch_in_epoch >= steps_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
                if evaluate_fn is not None and cfg.train.eval_every_epoch:
                    last_eval = _evaluate_and_select(cfg, model, evaluate_fn, state, info, run_dir)
                    evaluated_at = state.step
                    write_log({"step": state.step, "epoch": state.epoch, "eval": last_eval})
            if info.is_main:
                save_checkpoint(run_dir / "last", model, cfg, optimizer, scheduler, state)
            barrier()
    finally:
        if log_file is not None:
            log_file.close()
    if evaluate_fn is not None and evaluated_at != state.step:
        last_eval = _evaluate_and_select(cfg, model, evaluate_fn, state, info, run_dir)
        if info.is_main:
            with (run_dir / "log.jsonl").open("a") as f:
                f.write(
                    json.dumps({"step": state.step, "epoch": state.epoch, "eval": last_eval}) + "\n"
                )
    if info.is_main and not (run_dir / "best").exists():
        save_checkpoint(run_dir / "best", model, cfg)
    return FitResult(
        run_dir=run_dir,
        steps=state.step,
        epochs=state.epoch,
        seconds=time.perf_counter() - started,
        best_metric=state.best_metric,
        last_eval=last_eval,
        history=state.history,
    )


def _evaluate_and_select(
    cfg: Config,
    model: nn.Module,
    evaluate_fn: EvaluateFn,
    state: TrainState,
    info: DistInfo,
    run_dir: Path,
) -> dict[str, Any] | None:
    """Evaluate on the main process; keep ``best/`` when the selection metric improves."""
    result: dict[str, Any] | None = None
    if info.is_main:
        model.eval()
        with torch.no_grad():
            result = evaluate_fn(model)
        model.train()
        score = selection_metric(result)
        state.history.append({"epoch": state.epoch, "step": state.step, "score": score})
        if state.best_metric is None or score > state.best_metric or math.isnan(state.best_metric):
            state.best_metric = score
            save_checkpoint(run_dir / "best", model, cfg)
    barrier()
    return result
