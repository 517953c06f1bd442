"""Pretrain the tiny CLIP on synthetic stills and export it as a backbone (``vtrkit pretrain``).

:func:`pretrain_run` trains :class:`~vtrkit.models.clip_pretrain.ClipPretrainModel` with the one
training loop (:func:`~vtrkit.train.loop.fit`: resumable, one process or many under torchrun) on
:class:`~vtrkit.train.pretrain_source.PretrainSource` with
:class:`~vtrkit.train.pretrain_objective.ImageTextObjective`, then writes into ``train.output_dir``:

- ``clip.pt``: the towers as an OpenAI-layout state dict (what a ``ViT-B-32.pt`` holds), read by
  every recipe through ``model.backbone.checkpoint``;
- the tokenizer it was trained with (the CLIP BPE vocabulary file and its licence, or a copy of
  the configured tokenizer) for ``model.backbone.tokenizer``;
- ``backbone.yaml``: the ``model.backbone`` section that loads both (head counts and activation
  included, which a state dict does not record);
- ``pretrain_checks.json``: zero-shot image–text retrieval on held-out compositions, linear
  probes against chance and, when ``data`` holds the video benchmark, the zero-shot video row.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from vtrkit.backbones.tokenizer import DEFAULT_VOCAB
from vtrkit.config import BackboneConfig, Config
from vtrkit.distributed import DistInfo, barrier, cleanup, setup
from vtrkit.models.clip_pretrain import ClipPretrainModel, build_pretrain_model

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "clip.pt"
BACKBONE_FILE = "backbone.yaml"
CHECKS_FILE = "pretrain_checks.json"
LICENCE_FILE = "LICENSE-CLIP.txt"


@dataclass
class PretrainResult:
    run_dir: Path
    backbone: BackboneConfig
    """The ``model.backbone`` section that loads the exported towers."""
    checks: dict[str, Any]
    steps: int
    total_steps: int
    seconds: float
    stopped_by_budget: bool


def _copy_tokenizer(source: Path | None, run_dir: Path) -> Path:
    """Put the tokenizer the model was trained with beside the checkpoint; returns its path."""
    if source is None:
        assets = resources.files("vtrkit.backbones").joinpath("assets")
        target = run_dir / DEFAULT_VOCAB
        target.write_bytes(assets.joinpath(DEFAULT_VOCAB).read_bytes())
        (run_dir / LICENCE_FILE).write_bytes(assets.joinpath(LICENCE_FILE).read_bytes())
        return target
    source = Path(source)
    if source.is_dir():
        target = run_dir / "tokenizer"
        shutil.copytree(source, target, dirs_exist_ok=True)
        return target
    target = run_dir / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def export_backbone(model: ClipPretrainModel, cfg: Config, run_dir: Path) -> BackboneConfig:
    """Write ``clip.pt``, the tokenizer and ``backbone.yaml`` into ``run_dir``; returns the
    backbone section (paths as ``run_dir`` names them) that loads them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / CHECKPOINT_FILE
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    torch.save(model.openai_state_dict(), tmp)
    tmp.replace(checkpoint)
    src = cfg.model.backbone
    arch = src.arch
    backbone = BackboneConfig(
        checkpoint=checkpoint,
        tokenizer=_copy_tokenizer(src.tokenizer, run_dir),
        hidden_act=src.hidden_act,
        vision_heads=arch.vision_heads if arch is not None else src.vision_heads,
        text_heads=arch.text_heads if arch is not None else src.text_heads,
    )
    section = {"model": {"backbone": backbone.model_dump(mode="json", exclude_defaults=True)}}
    (run_dir / BACKBONE_FILE).write_text(yaml.safe_dump(section, sort_keys=False))
    return backbone


def read_backbone(run_dir: str | Path) -> BackboneConfig:
    """The ``model.backbone`` section a pretraining run exported (its ``backbone.yaml``)."""
    path = Path(run_dir) / BACKBONE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `vtrkit pretrain` with train.output_dir={run_dir} first"
        )
    return BackboneConfig.model_validate(yaml.safe_load(path.read_text())["model"]["backbone"])


def _video_row(backbone: BackboneConfig, cfg: Config, device: torch.device) -> dict[str, Any]:
    from vtrkit.data.datasets.files import AnnotationError
    from vtrkit.eval.pretrain_checks import zero_shot_video

    try:
        return zero_shot_video(backbone, cfg, device)
    except AnnotationError as exc:
        log.warning("no zero-shot video row: %s (generate it with `vtrkit data synthetic`)", exc)
        return {"skipped": str(exc)}


def final_checks(
    model: ClipPretrainModel, tokenizer: Any, backbone: BackboneConfig, cfg: Config, device: Any
) -> dict[str, Any]:
    """Every check of SPEC §6 on the trained model, and under ``init`` the same checks of the
    towers it started from (rebuilt from ``train.seed``): what pretraining added over random
    features. The video row loads the exported file."""
    from vtrkit.eval.pretrain_checks import run_checks
    from vtrkit.train.loop import seed_everything

    size = model.towers.image_size
    checks = run_checks(model, tokenizer, cfg, size, device)
    if cfg.model.backbone.checkpoint is None:
        seed_everything(cfg.train.seed)
        initial, _ = build_pretrain_model(cfg.model.backbone)
        init = run_checks(initial.to(device), tokenizer, cfg, size, device)
        checks["init"] = {k: v for k, v in init.items() if k != "heldout"}
    if cfg.pretrain.zero_shot_video:
        checks["zero_shot_video"] = _video_row(backbone, cfg, device)
    return checks


def pretrain_run(
    cfg: Config,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    info: DistInfo | None = None,
) -> PretrainResult:
    """Pretrain as ``cfg`` says, export the backbone and run the checks (see the module
    docstring). With ``resume`` a stopped run continues from ``train.output_dir/last``; a
    finished one only exports and checks again."""
    from vtrkit.train.loop import fit, seed_everything
    from vtrkit.train.pretrain_objective import ImageTextObjective
    from vtrkit.train.pretrain_source import PretrainSource

    if cfg.model.backbone.checkpoint is None and cfg.model.backbone.arch is None:
        raise ValueError("pretraining needs model.backbone.arch (the shape of the tiny CLIP)")
    own_group = info is None
    info = info or setup(device)
    try:
        seed_everything(cfg.train.seed)
        model, tokenizer = build_pretrain_model(cfg.model.backbone)
        source = PretrainSource(cfg, tokenizer, model.towers.image_size, info)
        result = fit(
            cfg, model, source, ImageTextObjective(), info, resume=resume, progress=progress
        )
        run_dir = Path(cfg.train.output_dir)
        backbone, checks = BackboneConfig(), {}
        if info.is_main:
            backbone = export_backbone(model, cfg, run_dir)
            checks = final_checks(model, tokenizer, backbone, cfg, info.device)
            checks["steps"], checks["total_steps"] = result.steps, result.total_steps
            checks["stopped_by_budget"] = result.stopped_by_budget
            (run_dir / CHECKS_FILE).write_text(json.dumps(checks, indent=1) + "\n")
        barrier()
        return PretrainResult(
            run_dir=run_dir,
            backbone=backbone,
            checks=checks,
            steps=result.steps,
            total_steps=result.total_steps,
            seconds=result.seconds,
            stopped_by_budget=result.stopped_by_budget,
        )
    finally:
        if own_group:
            cleanup()
