"""The one way to find, read and load a trained vtrkit model.

A checkpoint is a folder with ``model.safetensors`` (weights, loadable without any training state)
and ``config.yaml`` (the run's Config, enough to rebuild the model); a training checkpoint adds
``state.pt`` (see :mod:`vtrkit.train.checkpoint`). A run folder holds ``best/`` and ``last/``.

Wherever such a folder is accepted, a checkpoint saved by the official X-CLIP or CLIP4Clip code
is accepted too: the ``pytorch_model.bin.<epoch>`` file itself, or the official output folder
holding such files (the epoch its ``log.txt`` names as best, else the last epoch). It is detected
from its keys; the model's kind, temporal depth and X-CLIP frame/word slots are read off the
shapes and logged (:mod:`vtrkit.backbones.official_finetuned`), and the data settings the
weights cannot tell take documented defaults that ``--set data.*`` / a config file override.

:func:`load_trained` is used by evaluation, the index, the server, the Python API, the demo and the
CLIP2TV frozen teacher: it rebuilds the model of any kind (CLIP4Clip, X-CLIP, CLIP2TV, VideoCLIP)
with its tokenizer. It never builds a training-only part: a CLIP2TV model trained with a frozen
teacher loads without the teacher's files.
"""

from __future__ import annotations

import functools
import logging
import re
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


OFFICIAL_FILE = re.compile(r"^pytorch_model\.bin(?:\.(\d+))?$")
"""Names the official X-CLIP / CLIP4Clip training scripts save their model under."""
_BEST_IN_LOG = re.compile(r"The best model is: (\S+?),")


@functools.lru_cache(maxsize=1)
def _read_torch_file(path: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor] | str:
    """A tensor-only torch file's state dict (memory-mapped when possible), else why not.

    Cached on (path, mtime, size): resolving, configuring and loading read the same file.
    """
    try:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files saved in the legacy (pre-zip) format cannot be mapped
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike mean "not a state dict"
        return f"not a readable torch state dict ({type(exc).__name__}: {exc})"
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        return f"holds a {type(raw).__name__}, not a plain state dict of tensors"
    return raw


def read_official(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official X-CLIP/CLIP4Clip file (``module.`` stripped).

    Raises FileNotFoundError explaining why when ``path`` is not such a file.
    """
    from vtrkit.backbones.official_finetuned import is_official_finetuned, strip_wrapper

    stat = path.stat()
    raw = _read_torch_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if isinstance(raw, str):
        reason = raw
    elif is_official_finetuned(raw):
        return strip_wrapper(raw)
    else:
        reason = f"its keys ({', '.join(list(raw)[:4])}, ...) have no clip.visual.* towers"
    raise FileNotFoundError(
        f"{path} is neither a vtrkit checkpoint folder ({MODEL_FILE} + {CONFIG_FILE}) nor an "
        f"official X-CLIP/CLIP4Clip checkpoint: {reason}"
    )


def is_official_checkpoint(path: Path) -> bool:
    """True for a file :func:`resolve_checkpoint` accepted as an official checkpoint."""
    return path.is_file() and path.name != MODEL_FILE


def _official_file_in(folder: Path) -> Path | None:
    """The official checkpoint of an official output folder: the best epoch its ``log.txt``
    names, else the last epoch; None when the folder holds no ``pytorch_model.bin[.<n>]``."""
    files = {p.name: p for p in folder.iterdir() if OFFICIAL_FILE.match(p.name) and p.is_file()}
    if not files:
        return None
    log_file = folder / "log.txt"
    if log_file.is_file():
        named = _BEST_IN_LOG.findall(log_file.read_text(errors="replace"))
        for name in reversed(named):
            if Path(name).name in files:
                log.info("%s names %s as the best model", log_file, Path(name).name)
                return files[Path(name).name]

    def epoch(name: str) -> int:
        number = OFFICIAL_FILE.match(name).group(1)  # type: ignore[union-attr]
        return int(number) if number is not None else -1

    last = max(files, key=epoch)
    if len(files) > 1:
        log.warning(
            "%s holds %d official checkpoints and no log.txt line 'The best model is: ...'; "
            "using the last epoch, %s (give a file to choose another)",
            folder,
            len(files),
            last,
        )
    return files[last]


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (then ``best/``, else ``last/``, else the
    index-export ``checkpoint/``); or an official X-CLIP/CLIP4Clip checkpoint file, or an
    official output folder holding ``pytorch_model.bin.<epoch>`` files (the file is returned).

    A folder left as ``<name>.old`` by a crash between the two renames is used as a fallback.
    """
    path = Path(path)
    if path.is_file():
        if path.name == MODEL_FILE:
            return resolve_checkpoint(path.parent)
        read_official(path)  # raises, naming why, when it is not an official checkpoint
        return path
    for candidate in (path, path / "best", path / "last", path / "checkpoint"):
        if (candidate / MODEL_FILE).is_file():
            return candidate
        old = candidate.with_name(candidate.name + ".old")
        if (old / MODEL_FILE).is_file() and not candidate.exists():
            log.warning("using %s: the newer checkpoint was not completely written", old)
            return old
    official = _official_file_in(path) if path.is_dir() else None
    if official is not None:
        read_official(official)
        return official
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected {MODEL_FILE} there or in its best/ or last/ folder, "
        "or an official X-CLIP/CLIP4Clip pytorch_model.bin.<epoch>"
    )


def load_weights(model: nn.Module, folder: str | Path, strict: bool = True) -> None:
    """Load ``model.safetensors`` of a checkpoint folder (or an official checkpoint's weights,
    converted) into ``model``."""
    folder = resolve_checkpoint(folder)
    if is_official_checkpoint(folder):
        _load_official_weights(unwrap(model), folder, strict)
        return
    weights = load_file(str(folder / MODEL_FILE))
    missing, unexpected = unwrap(model).load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"checkpoint {folder / MODEL_FILE} does not fit the model: "
            f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )


def _load_official_weights(model: nn.Module, path: Path, strict: bool) -> None:
    """Convert an official checkpoint's keys and load them, naming (in official names) every
    key that is missing, unexpected or of another shape."""
    from vtrkit.backbones.official_finetuned import official_name, official_to_vtrkit

    weights = official_to_vtrkit(read_official(path))
    expected = model.state_dict()
    wrong = [
        f"{official_name(k)} {tuple(v.shape)} (the model has {tuple(expected[k].shape)})"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if wrong:
        raise RuntimeError(
            f"official checkpoint {path} does not fit the model built from its config: "
            f"{'; '.join(wrong[:6])}. X-CLIP's matrices fix data.num_frames/data.max_words; "
            "leave them as inferred"
        )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"official checkpoint {path} does not fit the model built from its config: missing "
            f"{sorted(official_name(k) for k in missing)[:10]}, unexpected "
            f"{sorted(official_name(k) for k in unexpected)[:10]}"
        )


def official_checkpoint_config(path: Path) -> Config:
    """The Config that rebuilds an official checkpoint's model, with what was inferred logged."""
    from vtrkit.backbones.official_finetuned import describe_official, official_config

    layout = describe_official(read_official(path))
    cfg = official_config(layout, path)
    slots = "from the X-CLIP matrices" if layout.num_frames else "CLIP4Clip defaults"
    log.info(
        "%s: official %s checkpoint: %s; data.num_frames=%d and data.max_words=%d (%s); "
        "data.* otherwise vtrkit's defaults (dataset %s): set them with --set data.<key>=...",
        path,
        layout.source,
        layout.describe(),
        cfg.data.num_frames,
        cfg.data.max_words,
        slots,
        cfg.data.dataset,
    )
    return cfg


def load_checkpoint_config(folder: str | Path) -> Config:
    """The Config saved with a checkpoint (``config.yaml``), or the one inferred from an
    official checkpoint's keys and shapes."""
    folder = resolve_checkpoint(folder)
    if is_official_checkpoint(folder):
        return official_checkpoint_config(folder)
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
        path: a checkpoint folder, a run folder (``best/``, else ``last/``), or an official
            X-CLIP/CLIP4Clip checkpoint file or output folder.
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
