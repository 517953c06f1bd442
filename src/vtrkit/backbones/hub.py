"""Backbone names resolved through the local Hugging Face cache.

``model.backbone.checkpoint`` (and ``--backbone``) accept, besides a local path:

* a Hub id such as ``openai/clip-vit-base-patch32`` (a Hugging Face ``CLIPModel`` repository);
* an OpenAI short name, as OpenAI's ``clip.load`` and open_clip spell them: ``ViT-B/32``,
  ``ViT-B/16``, ``ViT-L/14``, ``ViT-L/14@336px`` (also with ``-`` for ``/``), mapped to the
  ``openai/clip-vit-*`` repositories that hold the same weights.

A local file or folder of that name always wins. Otherwise the name is looked up in the Hugging
Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read when
the name is resolved). Only when it is not cached, and the user has not set ``HF_HUB_OFFLINE``
(nor ``TRANSFORMERS_OFFLINE``), is it downloaded into that cache: the configuration, the
tokenizer files and the safetensors weights (``pytorch_model.bin`` only when the repository has
no safetensors). Offline and not cached is an error naming the cache folder and the command that
fetches the model.

``microsoft/xclip-*`` repositories are a different system (X-CLIP for video *recognition*,
Hugging Face's ``XCLIPModel``), not the X-CLIP retrieval model of this library; they get an
error that says so.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from vtrkit.backbones.convert import CheckpointError

logger = logging.getLogger(__name__)

OPENAI_NAMES = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
"""OpenAI's model names -> the Hugging Face repositories with the same weights."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
_TRUE = {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def downloads_allowed() -> bool:
    """False when the user has switched the Hub off (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` set to 1/true/yes/on)."""
    return not any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_repo_for(name: str) -> str | None:
    """The Hub repository a backbone name refers to, or None when it is not a name.

    Raises CheckpointError for ``microsoft/xclip-*`` (another system, see the module docstring).
    """
    normalised = name.strip()
    for short, repo in OPENAI_NAMES.items():
        if normalised in (short, short.replace("/", "-")):
            return repo
    if not _HUB_ID.match(normalised):
        return None
    if normalised.lower().startswith("microsoft/xclip"):
        raise CheckpointError(
            f"{name} is Microsoft's X-CLIP for video recognition (Hugging Face XCLIPModel, "
            "'Expanding Language-Image Pretrained Models for General Video Recognition'), a "
            "different system from the X-CLIP retrieval model here, and not a CLIP backbone. "
            "Use a CLIP backbone such as openai/clip-vit-base-patch32 (or ViT-B/32); to load "
            "weights trained with the official X-CLIP retrieval code (github.com/xuguohai/X-CLIP),"
            " pass its pytorch_model.bin.<epoch> file as the checkpoint to `vtrkit eval` or "
            "convert it with `vtrkit convert`"
        )
    return normalised


def _cached_snapshot(repo: str, cache: Path) -> Path | None:
    """The cached snapshot folder of ``repo`` (main revision) holding a config and weights."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json", cache_dir=cache)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    for weights in _WEIGHT_FILES:
        if isinstance(try_to_load_from_cache(repo, weights, cache_dir=cache), str):
            return folder
    logger.warning("%s is in the cache at %s but has no weights file", repo, folder)
    return None


def download_snapshot(repo: str, cache: Path) -> None:
    """Fetch ``repo``'s configuration, tokenizer files and weights into ``cache``."""
    from huggingface_hub import hf_hub_download, snapshot_download

    folder = Path(snapshot_download(repo, cache_dir=cache, allow_patterns=_DOWNLOAD_PATTERNS))
    if not (folder / "model.safetensors").is_file():
        hf_hub_download(repo, "pytorch_model.bin", cache_dir=cache)


def resolve_backbone(name: str | Path) -> Path:
    """A local path for a backbone given as a path, a Hub id or an OpenAI short name.

    Raises:
        FileNotFoundError: neither a local path nor a name; or a name that is not cached while
            downloads are off (the message names the cache folder and the fetch command), or
            whose download failed.
        CheckpointError: a ``microsoft/xclip-*`` name.
    """
    path = Path(name)
    if path.exists():
        return path
    repo = hub_repo_for(str(name))
    if repo is None:
        raise FileNotFoundError(
            f"CLIP checkpoint {name} not found: give a local OpenAI .pt, open_clip state dict, "
            "Hugging Face folder or official X-CLIP/CLIP4Clip file, a Hub id such as "
            f"openai/clip-vit-base-patch32, or an OpenAI name ({', '.join(OPENAI_NAMES)})"
        )
    cache = hub_cache_dir()
    found = _cached_snapshot(repo, cache)
    if found is not None:
        logger.info("backbone %s: %s from the Hugging Face cache (%s)", name, repo, found)
        return found
    fetch = f"hf download {repo} --include '*.json' '*.txt' '*.safetensors'"
    if not downloads_allowed():
        raise FileNotFoundError(
            f"backbone {name} ({repo}) is not in the Hugging Face cache at {cache} and "
            "downloads are off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set). Fetch it on a "
            f"machine with a connection with `{fetch}` (the same cache folder, or copy "
            f"{cache / ('models--' + repo.replace('/', '--'))} here), or unset HF_HUB_OFFLINE"
        )
    logger.info("backbone %s: downloading %s into %s", name, repo, cache)
    try:
        download_snapshot(repo, cache)
    except Exception as exc:  # huggingface_hub raises many types (network, auth, not found)
        raise FileNotFoundError(
            f"backbone {name}: could not download {repo} into {cache} ({type(exc).__name__}: "
            f"{exc}). Check the connection and the name, or fetch it with `{fetch}`"
        ) from exc
    found = _cached_snapshot(repo, cache)
    if found is None:
        raise FileNotFoundError(
            f"backbone {name}: {repo} was downloaded into {cache} but holds no config.json with "
            f"{' or '.join(_WEIGHT_FILES)}; is it a Hugging Face CLIPModel repository?"
        )
    return found
