"""Reading CLIP checkpoints from disk into a Hugging Face ``CLIPModel``, never downloading.

Supported formats (``detect_format`` tells them apart):

* OpenAI TorchScript archive (``ViT-B-32.pt`` as released): ``torch.jit.load(...).state_dict()``;
* plain state dicts in OpenAI key names: OpenAI's own ``.pt``, open_clip ``.pt``/``.pth``/``.bin``
  (possibly prefixed ``module.`` or nested under ``state_dict``) and ``.safetensors``; also an
  open_clip Hub folder holding ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``;
* a Hugging Face folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
  loaded with ``local_files_only``;
* an official X-CLIP / CLIP4Clip fine-tuned checkpoint (``pytorch_model.bin.<epoch>``): its CLIP
  towers are the keys under ``clip.``; the rest (temporal encoder, head) is not a backbone's and
  is left out with a log line (load the whole model through :mod:`vtrkit.checkpoint`);
* a name resolved through the local Hugging Face cache (:mod:`vtrkit.backbones.hub`).

State dicts are converted with :func:`vtrkit.backbones.convert.openai_to_hf`; their architecture is
inferred from shapes. Missing tower weights are an error, unexpected keys a logged warning, and
every shape is checked against the model with a message naming the key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import Tensor
from transformers import CLIPModel

from vtrkit.backbones.convert import (
    CheckpointError,
    clip_config,
    infer_arch,
    openai_name,
    openai_to_hf,
)
from vtrkit.backbones.hub import resolve_backbone

logger = logging.getLogger(__name__)

_OPEN_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Entries of OpenAI archives that are hyper-parameters or buffers rather than weights.
_NON_WEIGHTS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
# The only weight whose absence leaves the towers intact (it keeps CLIP's initial ln(1/0.07)).
_OPTIONAL = frozenset({"logit_scale"})
_HOW_TO_FIX = (
    "point model.backbone.checkpoint at an OpenAI CLIP .pt, an open_clip .pt/.bin/.safetensors "
    "or a Hugging Face CLIP folder"
)


class CheckpointFormat(Enum):
    HF_FOLDER = "hf_folder"
    TORCHSCRIPT = "torchscript"
    TORCH_STATE_DICT = "torch_state_dict"
    SAFETENSORS = "safetensors"


@dataclass(frozen=True)
class CheckpointSource:
    """A checkpoint's format and the file (or, for HF_FOLDER, the folder) to read."""

    format: CheckpointFormat
    path: Path


def detect_format(path: str | Path) -> CheckpointSource:
    """Identify a checkpoint's format from the file system, without deserialising it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP checkpoint not found: {path} ({_HOW_TO_FIX})")
    if path.is_dir():
        if (path / "config.json").is_file():
            return CheckpointSource(CheckpointFormat.HF_FOLDER, path)
        for name in _OPEN_CLIP_HUB_FILES:
            if (path / name).is_file():
                return detect_format(path / name)
        raise CheckpointError(
            f"{path} is a folder without config.json (Hugging Face) or "
            f"{' / '.join(_OPEN_CLIP_HUB_FILES)} (open_clip); {_HOW_TO_FIX}"
        )
    if path.suffix == ".safetensors":
        return CheckpointSource(CheckpointFormat.SAFETENSORS, path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        # TorchScript archives carry compiled code and constants; torch.save archives do not.
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return CheckpointSource(CheckpointFormat.TORCHSCRIPT, path)
    return CheckpointSource(CheckpointFormat.TORCH_STATE_DICT, path)


def read_state_dict(source: CheckpointSource) -> dict[str, Tensor]:
    """Tensors of an OpenAI/open_clip checkpoint under OpenAI key names, on the CPU.

    Unwraps ``{"state_dict": ...}``, strips a ``module.`` prefix (DistributedDataParallel) and
    drops the hyper-parameter entries OpenAI archives carry (input_resolution, ...). An official
    X-CLIP/CLIP4Clip fine-tuned state dict (towers under ``clip.``) gives its towers only.
    """
    path = source.path
    if source.format is CheckpointFormat.TORCHSCRIPT:
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript, but OpenAI released CLIP as such archives.
                warnings.simplefilter("ignore", DeprecationWarning)
                raw: object = torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: not a readable TorchScript archive ({exc})") from exc
    elif source.format is CheckpointFormat.SAFETENSORS:
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    elif source.format is CheckpointFormat.TORCH_STATE_DICT:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise CheckpointError(
                f"{path}: cannot be read as a tensor-only torch checkpoint ({exc}); re-save just "
                "its state dict with torch.save(model.state_dict(), path)"
            ) from exc
    else:
        raise CheckpointError(f"{path}: a Hugging Face folder is not a state dict")
    return _normalise(raw, path)


def _normalise(raw: object, path: Path) -> dict[str, Tensor]:
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (mapping of tensors), got {type(raw)}"
        )
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        name = key.removeprefix("module.")
        if name in _NON_WEIGHTS:
            continue
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; is this a "
                "training checkpoint? Its weights should be under 'state_dict'"
            )
        out[name] = value
    return _clip_towers_of_finetuned(out, path)


def _clip_towers_of_finetuned(sd: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """The ``clip.*`` towers of an official fine-tuned state dict; other state dicts unchanged."""
    if "clip.visual.conv1.weight" not in sd or "visual.conv1.weight" in sd:
        return sd
    towers = {
        k.removeprefix("clip."): v
        for k, v in sd.items()
        if k.startswith("clip.") and k.removeprefix("clip.") not in _NON_WEIGHTS
    }
    rest = sorted(k for k in sd if not k.startswith("clip."))
    logger.info(
        "%s: an official X-CLIP/CLIP4Clip fine-tuned checkpoint; using its CLIP towers (clip.*) "
        "as the backbone and leaving out %d keys of its temporal encoder and head (%s%s); to "
        "use the whole fine-tuned model give the file as a checkpoint (vtrkit eval, "
        "load_model(checkpoint=...)) or convert it with `vtrkit convert`",
        path,
        len(rest),
        ", ".join(rest[:4]),
        ", ..." if len(rest) > 4 else "",
    )
    return towers


def load_hf_state_dict(model: CLIPModel, sd: Mapping[str, Tensor], source: str) -> None:
    """Copy Hugging Face-named tensors into ``model`` (casting dtype), checking completeness.

    Raises CheckpointError naming the key for a shape mismatch or for missing tower weights;
    logs unexpected keys and a missing logit_scale as warnings.
    """
    expected = model.state_dict()
    for key, value in sd.items():
        if key in expected and value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: {key} (OpenAI name {openai_name(key)}) has shape "
                f"{tuple(value.shape)} but the model built from this checkpoint expects "
                f"{tuple(expected[key].shape)}; the file is inconsistent or not a standard CLIP"
            )
    missing = [k for k in expected if k not in sd]
    required = [k for k in missing if k not in _OPTIONAL]
    if required:
        shown = ", ".join(openai_name(k) for k in required[:8])
        more = f" and {len(required) - 8} more" if len(required) > 8 else ""
        raise CheckpointError(f"{source}: missing CLIP weights {shown}{more}")
    if missing:
        logger.warning("%s: no %s; keeping the initial value", source, ", ".join(missing))
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        logger.warning(
            "%s: ignoring %d keys that are not part of the CLIP towers: %s",
            source,
            len(unexpected),
            ", ".join(unexpected),
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)


def _uninitialised():
    """Build modules without running weight initialisation (every weight is loaded after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers layout; initialising is just slower
        return contextlib.nullcontext()
    return no_init_weights()


def load_state_dict_checkpoint(
    source: CheckpointSource,
    hidden_act: str = "quick_gelu",
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> CLIPModel:
    """A ``CLIPModel`` holding the weights of an OpenAI/open_clip checkpoint (float32)."""
    sd = read_state_dict(source)
    arch = infer_arch(sd, vision_heads=vision_heads, text_heads=text_heads)
    logger.info("%s: %s CLIP, %s", source.path, source.format.value, arch)
    with _uninitialised():
        model = CLIPModel(clip_config(arch, hidden_act))
    # logit_scale is a plain tensor in the constructor, so it survives skipped initialisation.
    load_hf_state_dict(model, openai_to_hf(sd), str(source.path))
    return model.float().eval()


def load_hf_folder(path: Path) -> CLIPModel:
    """A ``CLIPModel`` from a local Hugging Face folder (float32, SDPA attention)."""
    config_path = path / "config.json"
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc
    if model_type != "clip":
        raise CheckpointError(
            f"{config_path}: model_type is {model_type!r}, expected 'clip' (a CLIPModel folder)"
        )
    try:
        model, info = CLIPModel.from_pretrained(
            str(path),
            local_files_only=True,
            attn_implementation="sdpa",
            dtype=torch.float32,
            output_loading_info=True,
            # mismatches are reported below with their key names instead of a generic error
            ignore_mismatched_sizes=True,
        )
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot load the Hugging Face CLIP weights ({exc})") from exc
    for key, found, wanted in sorted(info.get("mismatched_keys", ()), key=lambda m: m[0]):
        raise CheckpointError(
            f"{path}: {key} has shape {tuple(found)} but config.json implies {tuple(wanted)}"
        )
    required = sorted(k for k in info.get("missing_keys", ()) if k not in _OPTIONAL)
    if required:
        raise CheckpointError(f"{path}: missing CLIP weights {', '.join(required[:8])}")
    if info.get("unexpected_keys"):
        logger.warning("%s: ignoring keys %s", path, ", ".join(sorted(info["unexpected_keys"])))
    return model.eval()


def load_clip_model(
    path: str | Path,
    hidden_act: str = "quick_gelu",
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> CLIPModel:
    """Load any supported CLIP checkpoint or backbone name (see module docstring) as a float32
    ``CLIPModel``.

    ``hidden_act`` and the head counts apply to state dicts only, which do not record them;
    Hugging Face folders use their config.json.
    """
    source = detect_format(resolve_backbone(path))
    if source.format is CheckpointFormat.HF_FOLDER:
        return load_hf_folder(source.path)
    return load_state_dict_checkpoint(source, hidden_act, vision_heads, text_heads)
