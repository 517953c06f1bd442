"""Checkpoints: a folder with ``model.safetensors``, ``config.yaml`` and ``state.pt``.

``model.safetensors`` holds the weights (loadable without vtrkit's training state), ``config.yaml``
the run's Config (enough to rebuild the model), ``state.pt`` the optimiser, scheduler, RNG states and
counters needed to resume. A folder is written under a temporary name and renamed into place, so a
process killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vtrkit.config import Config, load_config, save_config

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
STATE_FILE = "state.pt"


@dataclass
class TrainState:
    """Counters that say where training stands."""

    epoch: int = 0
    """Completed epochs."""
    step: int = 0
    """Optimiser steps taken."""
    batch_in_epoch: int = 0
    """Batches of the current epoch already consumed (non-zero only for mid-epoch checkpoints)."""
    best_metric: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, de-aliased tensors (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, tensor in _unwrap(model).state_dict().items():
        key = tensor.data_ptr()
        out[name] = tensor.detach().clone().contiguous() if key in seen else tensor.contiguous()
        seen.setdefault(key, name)
    return out


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    cfg: Config,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    state: TrainState | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (temp folder + rename) and return its path."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(model_state_dict(model), str(tmp / MODEL_FILE))
    save_config(cfg, tmp / CONFIG_FILE)
    if optimizer is not None or state is not None:
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "train_state": (state or TrainState()).__dict__,
                "rng": rng_state(),
                "extra": extra or {},
            },
            tmp / STATE_FILE,
        )
    # Swap in: the old folder survives until the new one is in place.
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (then ``best/``, else ``last/``).

    A folder left as ``<name>.old`` by a crash between the two renames is used as a fallback.
    """
    path = Path(path)
    for candidate in (path, path / "best", path / "last"):
        if (candidate / MODEL_FILE).is_file():
            return candidate
        old = candidate.with_name(candidate.name + ".old")
        if (old / MODEL_FILE).is_file() and not candidate.exists():
            log.warning("using %s: the newer checkpoint was not completely written", old)
            return old
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected {MODEL_FILE} there or in its best/ or last/ folder"
    )


def load_weights(model: nn.Module, folder: str | Path, strict: bool = True) -> None:
    """Load ``model.safetensors`` of a checkpoint folder into ``model``."""
    folder = resolve_checkpoint(folder)
    weights = load_file(str(folder / MODEL_FILE))
    missing, unexpected = _unwrap(model).load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"checkpoint {folder / MODEL_FILE} does not fit the model: "
            f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )


def load_checkpoint_config(folder: str | Path) -> Config:
    folder = resolve_checkpoint(folder)
    return load_config(folder / CONFIG_FILE)


def config_for_checkpoint(
    checkpoint: str | Path, config: str | Path | None = None, overrides: list[str] | None = None
) -> Config | None:
    """The config to evaluate ``checkpoint`` with: ``config`` (a YAML file) with ``overrides``,
    else the checkpoint's saved config with ``overrides``, else None (use the saved one as is)."""
    from vtrkit.config import apply_overrides, config_from_dict

    if config is not None:
        return load_config(config, overrides)
    if overrides:
        base = load_checkpoint_config(checkpoint).model_dump(mode="json")
        return config_from_dict(apply_overrides(base, overrides), f"{checkpoint} with overrides")
    return None


def load_training_state(
    folder: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore weights, optimiser, scheduler and RNG; return the counters and extras."""
    folder = Path(folder)
    load_weights(model, folder)
    blob = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    if blob.get("optimizer") is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and blob.get("scheduler") is not None:
        scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return TrainState(**blob["train_state"]), blob.get("extra", {})
