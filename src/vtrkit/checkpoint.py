"""The one way to find, read and load a trained vtrkit model.

A checkpoint is a folder with ``model.safetensors`` (weights, loadable without any training state)
and ``config.yaml`` (the run's Config, enough to rebuild the model); a training checkpoint adds
``state.pt`` (see :mod:`vtrkit.train.checkpoint`). A run folder holds ``best/`` and ``last/``.

:func:`load_trained` is used by evaluation, the index, the server, the Python API, the demo and the
CLIP2TV frozen teacher: it rebuilds the model of any kind (CLIP4Clip, X-CLIP, CLIP2TV, VideoCLIP)
with its tokenizer. It never builds a training-only part: a CLIP2TV model trained with a frozen
teacher loads without the teacher's files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from vtrkit.config import Config, apply_overrides, config_from_dict, load_config

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
STATE_FILE = "state.pt"
TOKENIZER_DIR = "tokenizer"
"""A run folder's saved tokenizer (VideoCLIP's caption vocabulary), beside ``best/`` and ``last/``."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") else model


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, de-aliased tensors (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, tensor in unwrap(model).state_dict().items():
        key = tensor.data_ptr()
        out[name] = tensor.detach().clone().contiguous() if key in seen else tensor.contiguous()
        seen.setdefault(key, name)
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (then ``best/``, else ``last/``, else the
    index-export ``checkpoint/``).

    A folder left as ``<name>.old`` by a crash between the two renames is used as a fallback.
    """
    path = Path(path)
    for candidate in (path, path / "best", path / "last", path / "checkpoint"):
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
    missing, unexpected = unwrap(model).load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"checkpoint {folder / MODEL_FILE} does not fit the model: "
            f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )


def load_checkpoint_config(folder: str | Path) -> Config:
    """The Config saved with a checkpoint (``config.yaml``)."""
    folder = resolve_checkpoint(folder)
    return load_config(folder / CONFIG_FILE)


def config_for_checkpoint(
    checkpoint: str | Path, config: str | Path | None = None, overrides: list[str] | None = None
) -> Config | None:
    """The config to evaluate ``checkpoint`` with: ``config`` (a YAML file) with ``overrides``,
    else the checkpoint's saved config with ``overrides``, else None (use the saved one as is)."""
    if config is not None:
        return load_config(config, overrides)
    if overrides:
        base = load_checkpoint_config(checkpoint).model_dump(mode="json")
        return config_from_dict(apply_overrides(base, overrides), f"{checkpoint} with overrides")
    return None


@dataclass
class TrainedModel:
    """A trained model ready for inference (eval mode), with what it needs around it."""

    model: nn.Module
    """A :class:`~vtrkit.models.base.RetrievalModel`, or a VideoCLIP dual encoder."""
    tokenizer: Any
    config: Config
    folder: Path
    """The checkpoint folder the weights came from."""


def build_for_config(cfg: Config, run_folder: Path | None = None) -> tuple[nn.Module, Any]:
    """An untrained model of ``cfg.model.kind`` and its tokenizer (VideoCLIP: the tokenizer the
    config names, else the run folder's saved ``tokenizer/``)."""
    if cfg.model.kind == "videoclip":
        from vtrkit.videoclip.data import load_tokenizer
        from vtrkit.videoclip.model import build_videoclip

        vc = cfg.model.videoclip
        tok_folder = vc.tokenizer or vc.text_encoder
        if tok_folder is None:
            if run_folder is None:
                raise ValueError(
                    "a VideoCLIP model needs model.videoclip.tokenizer or a run folder"
                )
            tok_folder = run_folder / TOKENIZER_DIR
        tokenizer = load_tokenizer(tok_folder)
        model = build_videoclip(
            vc, tokenizer.vocab_size, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        )
        return model, tokenizer
    from vtrkit.models.build import build_model

    return build_model(cfg.model, cfg.data)


def load_trained(
    path: str | Path, device: str | torch.device = "cpu", cfg: Config | None = None
) -> TrainedModel:
    """Load a trained model from a checkpoint or run folder.

    Args:
        path: a checkpoint folder, or a run folder (``best/``, else ``last/``).
        device: where to put the model.
        cfg: the config to rebuild with (default: the one saved with the checkpoint); its model
            section must describe the saved weights.

    Raises:
        FileNotFoundError: naming ``path`` when it holds no checkpoint.
        RuntimeError: naming the missing and unexpected keys when the weights do not fit.
    """
    folder = resolve_checkpoint(path)
    cfg = cfg or load_checkpoint_config(folder)
    model, tokenizer = build_for_config(cfg, folder.parent)
    load_weights(model, folder)
    log.info("loaded %s model from %s", cfg.model.kind, folder)
    return TrainedModel(model.to(device).eval(), tokenizer, cfg, folder)
