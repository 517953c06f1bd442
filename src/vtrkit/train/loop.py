"""The one training loop: every method, one process or many under ``torchrun``.

What differs between methods comes in as two pieces: a *batch source*
(:mod:`vtrkit.train.sources`: a data loader, or VideoCLIP's retrieval-augmented plan) and an
*objective* (:mod:`vtrkit.train.objectives`). Everything else holds for every method: the global
batch ``train.batch_size`` split over processes and ``train.grad_accum`` micro-batches, precision
(``train.precision``), ``train.threads``, the finite-loss check, gradient clipping, the optimiser
and schedule, ``log.jsonl``, periodic and end-of-epoch checkpoints, the time budget (one decision
taken by all processes together), evaluation with best-checkpoint selection, and exact resume:
``last/state.pt`` holds the optimiser, schedule, counters and, for every process, its RNG states and
its batch source's position, so an interrupted and resumed run ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
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
from tqdm import tqdm

from vtrkit.checkpoint import STATE_FILE, resolve_checkpoint
from vtrkit.config import Config, save_config
from vtrkit.distributed import DistInfo, all_gather_objects, any_process, barrier
from vtrkit.train.checkpoint import (
    TrainState,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vtrkit.train.objectives import Objective, TrainingStep
from vtrkit.train.optim import build_optimizer
from vtrkit.train.schedule import build_scheduler
from vtrkit.train.sources import BatchSource

log = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module], dict[str, Any]]
SelectFn = Callable[[dict[str, Any]], float]


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    epochs: int
    seconds: float
    best_metric: float | None
    last_eval: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by_budget: bool = False
    """True when ``train.time_budget_s`` cut the schedule short (the result is not the recipe's)."""
    total_steps: int = 0
    """Optimiser steps the schedule planned."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def selection_metric(metrics: dict[str, Any]) -> float:
    """Checkpoint selection score: text→video R@1 of the raw (unpost-processed) similarities."""
    return float(metrics["raw"]["t2v/R@1"])


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
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


class _Run:
    """One call of :func:`fit`: the state shared by its steps, epochs and checkpoints."""

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        source: BatchSource,
        objective: Objective,
        info: DistInfo,
        progress: bool,
    ) -> None:
        self.cfg, self.model, self.source, self.objective, self.info = (
            cfg,
            model,
            source,
            objective,
            info,
        )
        self.run_dir = Path(cfg.train.output_dir)
        self.started = time.perf_counter()
        self.progress = progress
        self.steps_per_epoch = source.steps_per_epoch()
        total = self.steps_per_epoch * cfg.train.epochs
        self.total_steps = min(total, cfg.train.max_steps or total)
        model.to(info.device)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.optim.warmup)
        self.scaler = torch.amp.GradScaler(enabled=cfg.train.precision == "fp16")
        self.state = TrainState()
        self.saved_at: tuple[int, int] | None = None
        self.log_file = None

    # -- checkpoints -------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``run_dir/last``: the source's position first (a source that finds the
        data changed refuses before any weight is loaded), then weights, optimiser, schedule,
        counters and this process's RNG states."""
        if not (self.run_dir / "last").exists():
            log.info("no checkpoint in %s yet: starting from scratch", self.run_dir)
            return
        last = resolve_checkpoint(self.run_dir / "last")
        blob = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False, mmap=True)
        ranks = blob.get("extra", {}).get("ranks")
        own = ranks[self.info.rank] if ranks and len(ranks) > self.info.rank else None
        if own is not None and own.get("source") is not None:
            self.source.load_state_dict({**own["source"], "checkpoint": str(last)})
        self.state, _ = load_training_state(last, self.model, self.optimizer, self.scheduler)
        if ranks is not None and len(ranks) != self.info.world_size:
            log.warning(
                "%s was written by %d processes, this run has %d: RNG streams are not carried over",
                last,
                len(ranks),
                self.info.world_size,
            )
        elif own is not None:
            set_rng_state(own["rng"])
        self.saved_at = (self.state.epoch, self.state.step)
        log.info(
            "resumed from %s at epoch %d, step %d (%d steps into the epoch)",
            last,
            self.state.epoch,
            self.state.step,
            self.state.batch_in_epoch,
        )

    def save_last(self) -> None:
        """Write ``last/`` (a collective call: every process hands in its RNG and source state)."""
        ranks = all_gather_objects({"rng": rng_state(), "source": self.source.state_dict()})
        if self.info.is_main:
            save_checkpoint(
                self.run_dir / "last",
                self.model,
                self.cfg,
                self.optimizer,
                self.scheduler,
                self.state,
                {"ranks": ranks},
            )
        barrier()
        self.saved_at = (self.state.epoch, self.state.step)

    def write_log(self, record: dict[str, Any]) -> None:
        if self.log_file is not None:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    # -- steps -------------------------------------------------------------------------------
    def optimizer_step(self) -> float:
        """Clip, step, schedule, run the objective's after-step; returns the gradient norm."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.optim.clip_grad
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.objective.after_step(self.model)
        self.state.step += 1
        self.state.batch_in_epoch += 1
        return float(grad_norm)

    def log_step(
        self, out: dict[str, Any], loss: float, grad_norm: float, clips: int, since: float
    ) -> None:
        """One ``log.jsonl`` record: ``loss`` is the step's mean over its micro-batches, the
        ``loss_<part>`` entries those of its last micro-batch."""
        elapsed = time.perf_counter() - since
        record = {
            "step": self.state.step,
            "epoch": self.state.epoch + self.state.batch_in_epoch / self.steps_per_epoch,
            "loss": loss,
            "lr_new": self.scheduler.get_last_lr()[-1],
            "grad_norm": grad_norm,
            "clips_per_s": clips / max(elapsed, 1e-9),
            "time_s": time.perf_counter() - self.started,
        }
        record.update({k: float(v.detach()) for k, v in out.items() if k.startswith("loss_")})
        self.write_log(record)

    def run_epoch(self, wrapped: nn.Module) -> bool:
        """Train the rest of the current epoch; True when the time budget stopped it."""
        cfg, info, state = self.cfg, self.info, self.state
        self.source.start_epoch(state.epoch, self.model)
        self.model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=state.batch_in_epoch,
            desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}",
            disable=not (self.progress and info.is_main),
            dynamic_ncols=True,
        )
        clips, since, micro, step_loss = 0, time.perf_counter(), 0, 0.0
        try:
            for raw in self.source:
                batch = _equalize(None if raw is None else _to_device(raw, info.device), info)
                if batch is None:
                    log.warning("skipping a batch in which every video failed to decode")
                    continue
                sync = (micro + 1) % cfg.train.grad_accum == 0
                ctx = wrapped.no_sync() if info.enabled and not sync else nullcontext()
                with ctx, autocast(cfg.train.precision, info.device):
                    out = wrapped(batch)
                    loss = out["loss"] / cfg.train.grad_accum
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {state.step}; lower optim.lr_new "
                        "or use train.precision=fp32"
                    )
                self.scaler.scale(loss).backward()
                step_loss = float(loss.detach()) + (
                    step_loss if micro % cfg.train.grad_accum else 0.0
                )
                micro += 1
                clips += len(batch["input_ids"]) * info.world_size
                if not sync:
                    continue
                grad_norm = self.optimizer_step()
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
                if state.step % cfg.train.log_every == 0 or state.step == 1:
                    self.log_step(out, step_loss, grad_norm, clips, since)
                    clips, since = 0, time.perf_counter()
                every = cfg.train.checkpoint_every
                if (
                    every
                    and state.step % every == 0
                    and state.batch_in_epoch < self.steps_per_epoch
                ):
                    self.save_last()  # the epoch's last step is saved after its evaluation
                if state.step >= self.total_steps:
                    return False
                if self.out_of_time():
                    return True
            return False
        finally:
            bar.close()

    def out_of_time(self) -> bool:
        budget = self.cfg.train.time_budget_s
        if budget is None:
            return False
        spent = time.perf_counter() - self.started > budget
        if any_process(spent, self.info):
            log.warning(
                "train.time_budget_s=%.0f s reached at step %d of %d: the schedule is cut short",
                budget,
                self.state.step,
                self.total_steps,
            )
            return True
        return False


def fit(
    cfg: Config,
    model: nn.Module,
    source: BatchSource,
    objective: Objective,
    info: DistInfo,
    evaluate_fn: EvaluateFn | None = None,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    select: SelectFn = selection_metric,
) -> FitResult:
    """Train ``model`` with ``objective`` on ``source``'s batches as ``cfg`` says.

    Writes ``run_dir/last`` (resumable), ``run_dir/best`` (best ``select(evaluate_fn(model))``),
    ``config.yaml`` and ``log.jsonl`` (one JSON object per logged step and per evaluation). With
    ``resume`` the run continues from ``run_dir/last`` where it stopped, mid-epoch included.
    ``stop_after_epochs`` ends this call early without changing the schedule (used to split a run).
    """
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    run = _Run(cfg, model, source, objective, info, progress)
    if resume:
        run.resume()
    if info.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.run_dir / "config.yaml")
    step_module: nn.Module = TrainingStep(model, objective)
    wrapped = step_module
    if info.enabled:
        wrapped = DistributedDataParallel(
            step_module,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    state = run.state
    last_eval: dict[str, Any] | None = None
    evaluated_at, out_of_time = -1, False
    run.log_file = (run.run_dir / "log.jsonl").open("a") if info.is_main else None
    try:
        while state.epoch < cfg.train.epochs and state.step < run.total_steps and not out_of_time:
            if stop_after_epochs is not None and state.epoch >= stop_after_epochs:
                break
            out_of_time = run.run_epoch(wrapped)
            if state.batch_in_epoch >= run.steps_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
                if evaluate_fn is not None and cfg.train.eval_every_epoch:
                    last_eval = _evaluate_and_select(run, evaluate_fn, select)
                    evaluated_at = state.step
            if run.saved_at != (state.epoch, state.step):
                run.save_last()
        # A run stopped by max_steps or the time budget (or resumed with nothing left) ends with
        # one evaluation; the checkpoint above already holds the RNG states of before it.
        if evaluate_fn is not None and evaluated_at != state.step:
            last_eval = _evaluate_and_select(run, evaluate_fn, select)
    finally:
        if run.log_file is not None:
            run.log_file.close()
    del wrapped, step_module
    if info.is_main and not (run.run_dir / "best").exists():
        save_checkpoint(run.run_dir / "best", model, cfg)
    barrier()
    return FitResult(
        run_dir=run.run_dir,
        steps=state.step,
        epochs=state.epoch,
        seconds=time.perf_counter() - run.started,
        best_metric=state.best_metric,
        last_eval=last_eval,
        history=state.history,
        stopped_by_budget=out_of_time,
        total_steps=run.total_steps,
    )


def _evaluate_and_select(run: _Run, evaluate_fn: EvaluateFn, select: SelectFn) -> dict[str, Any]:
    """Evaluate on the main process; keep ``best/`` when the selection score improves."""
    state, result = run.state, None
    if run.info.is_main:
        run.model.eval()
        with torch.no_grad():
            result = evaluate_fn(run.model)
        run.model.train()
        score = select(result)
        state.history.append({"epoch": state.epoch, "step": state.step, "score": score})
        if state.best_metric is None or score > state.best_metric or math.isnan(state.best_metric):
            state.best_metric = score
            save_checkpoint(run.run_dir / "best", run.model, run.cfg)
        run.write_log({"step": state.step, "epoch": state.epoch, "eval": result})
    barrier()
    return result  # type: ignore[return-value]
