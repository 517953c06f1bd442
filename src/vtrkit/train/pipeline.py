"""From a Config to a trained and evaluated model: the glue behind ``vtrkit train`` and ``eval``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtrkit.checkpoint import STATE_FILE, load_trained, resolve_checkpoint
from vtrkit.config import Config, ModelConfig
from vtrkit.data.datasets import read_dataset
from vtrkit.data.records import VideoRecord
from vtrkit.distributed import DistInfo, cleanup, setup
from vtrkit.eval.evaluate import evaluate, with_default_window
from vtrkit.eval.evaluate import load_subsets as read_subsets_file
from vtrkit.eval.report import format_results_table
from vtrkit.models.build import build_model
from vtrkit.models.clip2tv import Clip2TV
from vtrkit.train.clip2tv_objective import Clip2TVObjective
from vtrkit.train.loop import FitResult, fit, seed_everything
from vtrkit.train.objectives import ContrastiveObjective, Objective, VideoClipObjective
from vtrkit.train.sources import LoaderSource

log = logging.getLogger(__name__)


def build_objective(
    cfg: ModelConfig, steps_per_epoch: int | None = None, start_step: int = 0
) -> Objective:
    """The objective that trains a model of ``cfg.kind`` (CLIP2TV's loads its frozen teacher).

    ``steps_per_epoch`` (the batch source's) and ``start_step`` (steps a resumed run has already
    taken) place CLIP2TV's SD α ramp; the other objectives do not count steps.
    """
    if cfg.kind == "clip2tv":
        return Clip2TVObjective(cfg.clip2tv, steps_per_epoch=steps_per_epoch, start_step=start_step)
    if cfg.kind == "videoclip":
        vc = cfg.videoclip
        return VideoClipObjective(gather=vc.gather, text_to_video_only=vc.text_to_video_only)
    return ContrastiveObjective()


def resumed_step(run_dir: Path) -> int:
    """Optimiser steps already taken by the checkpoint ``run_dir/last`` that
    :func:`~vtrkit.train.loop.fit` resumes from (0 when there is none)."""
    if not (Path(run_dir) / "last").exists():
        return 0
    folder = resolve_checkpoint(Path(run_dir) / "last")
    blob = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False, mmap=True)
    return int(blob["train_state"]["step"])


def load_subsets(cfg: Config) -> dict[str, list[str]]:
    """Named test subsets: ``eval.subsets`` if set, else ``subsets.json`` beside the annotations
    (the synthetic benchmark writes one)."""
    path = cfg.eval.subsets or Path(cfg.data.root) / "subsets.json"
    return read_subsets_file(path) if Path(path).is_file() else {}


def eval_split(cfg: Config) -> str:
    """Validation split for checkpoint selection; the test split only when there is none."""
    return cfg.data.val_split or cfg.data.test_split


def make_train_dataset(cfg: Config, tokenizer: Any, records: list[VideoRecord]):
    from vtrkit.data.dataset import VideoTextDataset, collate

    return VideoTextDataset.from_config(records, tokenizer, cfg.data, "pairs"), collate


def run_evaluation(
    cfg: Config,
    model: nn.Module,
    tokenizer: Any,
    records: list[VideoRecord],
    device: torch.device,
    subsets: dict[str, list[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate; a CLIP2TV model with its matching head also reports vtm re-ranked numbers."""
    if isinstance(model, Clip2TV) and model.fusion is not None:
        from vtrkit.eval.rerank import evaluate_with_rerank

        return evaluate_with_rerank(
            model,  # type: ignore[arg-type]
            records,
            tokenizer,
            cfg.data,
            cfg.eval,
            device,
            subsets=subsets or {},
            progress=progress,
        )
    return evaluate(
        model,
        records,
        tokenizer,
        cfg.data,
        cfg.eval,
        device=device,
        subsets=subsets or {},
        progress=progress,
    )


def train_run(
    cfg: Config,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    info: DistInfo | None = None,
    wrap_objective: Callable[[Objective], Objective] | None = None,
) -> FitResult:
    """Train as ``cfg`` says (one process, or one of many under torchrun); ``model.kind:
    videoclip`` trains on stored per-second features (:func:`vtrkit.videoclip.train.run_videoclip`).

    ``wrap_objective`` receives the built objective and returns the one to train with (e.g. a
    wrapper that records diagnostics, as ``benchmarks/clip2tv_ablation.py`` does); it must keep
    the objective's losses.
    """
    if cfg.model.kind == "videoclip":
        if wrap_objective is not None:
            raise ValueError("train_run: wrap_objective is not supported for model.kind=videoclip")
        from vtrkit.videoclip.train import run_videoclip

        return run_videoclip(cfg, device, resume=resume, info=info, progress=progress)[0]
    own_group = info is None
    info = info or setup(device)
    try:
        seed_everything(cfg.train.seed)
        model, tokenizer = build_model(cfg.model, cfg.data)
        train_records = with_default_window(
            read_dataset(cfg.data, cfg.data.train_split), cfg.data.window
        )
        if cfg.train.max_train_videos is not None:
            train_records = train_records[: cfg.train.max_train_videos]
        dataset, collate = make_train_dataset(cfg, tokenizer, train_records)
        split = eval_split(cfg)
        eval_records = read_dataset(cfg.data, split)
        subsets = load_subsets(cfg) if split == cfg.data.test_split else {}
        log.info(
            "training %s on %d videos (%d pairs); selecting on split %r (%d videos)",
            cfg.model.kind,
            len(train_records),
            len(dataset),
            split,
            len(eval_records),
        )

        def evaluate_fn(m: nn.Module) -> dict[str, Any]:
            return run_evaluation(cfg, m, tokenizer, eval_records, info.device, subsets, progress)

        source = LoaderSource(dataset, collate, cfg, info)
        start = resumed_step(cfg.train.output_dir) if resume else 0
        objective = build_objective(cfg.model, source.steps_per_epoch(), start)
        if wrap_objective is not None:
            objective = wrap_objective(objective)
        result = fit(
            cfg,
            model,
            source,
            objective,
            info,
            evaluate_fn=evaluate_fn,
            resume=resume,
            progress=progress,
        )
        del model
        return result
    finally:
        if own_group:
            cleanup()


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str | None = None,
    overrides_cfg: Config | None = None,
    device: str | None = None,
    progress: bool = True,
    output: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint folder (or run folder) on a split; print and optionally save JSON."""
    folder = resolve_checkpoint(checkpoint)
    info = setup(device)
    trained = load_trained(folder, info.device, overrides_cfg)
    cfg, model, tokenizer = trained.config, trained.model, trained.tokenizer
    if cfg.model.kind == "videoclip":
        from vtrkit.videoclip.train import evaluate_videoclip_checkpoint

        del model
        metrics = evaluate_videoclip_checkpoint(folder, split, cfg, str(info.device))
        _write_json(metrics, output)
        return metrics
    split = split or cfg.data.test_split
    records = read_dataset(cfg.data, split)
    subsets = load_subsets(cfg) if split == cfg.data.test_split else {}
    with torch.no_grad():
        results = run_evaluation(cfg, model, tokenizer, records, info.device, subsets, progress)
    results["checkpoint"] = str(folder)
    results["split"] = split
    _write_json(results, output)
    log.debug("\n%s", format_results_table(results, title=f"{cfg.name} on {split}"))
    return results


def _write_json(results: dict[str, Any], output: Path | None) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
