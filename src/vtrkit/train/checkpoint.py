"""Training checkpoints: a folder with ``model.safetensors``, ``config.yaml`` and ``state.pt``.

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
from safetensors.torch import save_file
from torch import nn

from vtrkit.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    STATE_FILE,
    load_weights,
    model_state_dict,
)
from vtrkit.config import Config, save_config

log = logging.getLogger(__name__)


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
