"""Checkpoints saved by the official X-CLIP and CLIP4Clip code, read as vtrkit models.

The official training scripts save ``pytorch_model.bin.<epoch>``: a plain state dict of the whole
model. Its keys (a ``module.`` prefix, if any, is stripped):

===============================================  =============================================
official                                         vtrkit
===============================================  =============================================
``clip.*`` (OpenAI CLIP names)                   ``towers.model.*`` (Hugging Face CLIP names)
``frame_position_embeddings.weight`` [77, D]     ``temporal.frame_position.weight``
``transformerClip.resblocks.<i>.*``              ``temporal.blocks.<i>.*`` (seqTransf, X-CLIP)
``lstm_visual.{weight,bias}_{ih,hh}_l0``         ``temporal.lstm.*`` (seqLSTM)
``cross.embeddings.position_embeddings.weight``  ``cross.position.weight`` (tightTransf)
``cross.embeddings.token_type_embeddings.weight``  ``cross.type_embedding.weight`` (if present)
``cross.transformer.resblocks.<i>.*``            ``cross.blocks.<i>.*``
``cross.pooler.ln_pool.*``, ``cross.pooler.dense.*``  ``cross.pool_norm.*``, ``cross.pool_dense.*``
``similarity_dense.*``                           ``cross.score.*``
X-CLIP ``global_mat_weight``, ``local_mat_weight``  ``head.global_mat``, ``head.local_mat``
``word_logit_weight``, ``frame_logit_weight``    ``head.word_mix``, ``head.frame_mix``
``word_mat_weight``, ``frame_mat_weight``        ``head.word_first``, ``head.frame_first``
``word_mat_weight2``, ``frame_mat_weight2``      ``head.word_second``, ``head.frame_second``
===============================================  =============================================

Residual blocks use OpenAI's names (fused ``attn.in_proj_*``), converted as for CLIP itself. The
head kind, the temporal depth, the cross-encoder depth and, for X-CLIP, the frame and word slots
(Nf, Nw: the sizes of ``frame_logit_weight`` and ``word_logit_weight``) are read off the keys and
shapes; the CLIP architecture as for an OpenAI state dict. The one key with no home is seqLSTM's
``frame_position_embeddings.weight``, which the official seqLSTM creates but never uses: it is
left out with a log line. Any other key that fits no row above is an error naming it.

Shapes: D embedding width, Nw word slots, Nf frame slots.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from vtrkit.backbones.convert import (
    CheckpointError,
    hf_to_openai,
    infer_arch,
    openai_name,
    openai_to_hf,
)
from vtrkit.config import ClipArch, Config

logger = logging.getLogger(__name__)

XCLIP_MATRICES = {
    "global_mat_weight": "head.global_mat",
    "local_mat_weight": "head.local_mat",
    "word_logit_weight": "head.word_mix",
    "word_mat_weight": "head.word_first",
    "word_mat_weight2": "head.word_second",
    "frame_logit_weight": "head.frame_mix",
    "frame_mat_weight": "head.frame_first",
    "frame_mat_weight2": "head.frame_second",
}
"""The eight X-CLIP head matrices: official name -> vtrkit name (same orientation)."""

_FIXED = {
    "frame_position_embeddings.weight": "temporal.frame_position.weight",
    "cross.embeddings.position_embeddings.weight": "cross.position.weight",
    "cross.embeddings.token_type_embeddings.weight": "cross.type_embedding.weight",
    "cross.pooler.ln_pool.weight": "cross.pool_norm.weight",
    "cross.pooler.ln_pool.bias": "cross.pool_norm.bias",
    "cross.pooler.dense.weight": "cross.pool_dense.weight",
    "cross.pooler.dense.bias": "cross.pool_dense.bias",
    "similarity_dense.weight": "cross.score.weight",
    "similarity_dense.bias": "cross.score.bias",
    **XCLIP_MATRICES,
}
_FIXED_INV = {v: k for k, v in _FIXED.items()}
_LSTM = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
# Official block-stack prefix -> vtrkit block-stack prefix.
_STACKS = {
    "transformerClip.resblocks.": "temporal.blocks.",
    "cross.transformer.resblocks.": "cross.blocks.",
}
_HF_CLIP_KEY = re.compile(
    r"^((vision_model|text_model)\..+|(visual|text)_projection\.weight|logit_scale)$"
)
_NON_WEIGHTS = frozenset({"input_resolution", "context_length", "vocab_size"})
_TOWERS = "towers.model."
_HF_TEXT_LAYERS = "text_model.encoder.layers."


@dataclass(frozen=True)
class OfficialLayout:
    """What an official checkpoint holds, read off its keys and shapes."""

    source: str
    """``X-CLIP`` or ``CLIP4Clip``."""
    kind: str
    """vtrkit ``model.kind``: meanP, seqLSTM, seqTransf, tightTransf or xclip."""
    temporal_layers: int
    """Blocks of ``transformerClip`` (0: no temporal transformer)."""
    cross_layers: int
    """Blocks of the tightTransf cross-encoder (0: none)."""
    type_embedding: bool
    num_frames: int | None
    """Nf of the X-CLIP matrices (None for CLIP4Clip heads, which do not fix it)."""
    max_words: int | None
    """Nw of the X-CLIP matrices (None for CLIP4Clip heads)."""
    arch: ClipArch

    def describe(self) -> str:
        parts = [f"kind {self.kind}"]
        if self.temporal_layers:
            parts.append(f"{self.temporal_layers} temporal layers (transformerClip)")
        if self.cross_layers:
            parts.append(f"{self.cross_layers} cross-encoder layers")
        if self.num_frames is not None:
            parts.append(f"Nf={self.num_frames}, Nw={self.max_words} from the X-CLIP matrices")
        a = self.arch
        parts.append(
            f"CLIP ViT {a.image_size}px/{a.patch_size} (vision {a.vision_width}x"
            f"{a.vision_layers}, text {a.text_width}x{a.text_layers}, D={a.embed_dim})"
        )
        return ", ".join(parts)


def strip_wrapper(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict without a DataParallel/DDP ``module.`` prefix."""
    return {k.removeprefix("module."): v for k, v in sd.items()}


def is_official_finetuned(keys: object) -> bool:
    """True when the keys are an official X-CLIP/CLIP4Clip model (CLIP towers under ``clip.``)."""
    names = {str(k).removeprefix("module.") for k in keys}  # type: ignore[attr-defined]
    return "clip.visual.conv1.weight" in names


def _stack_depth(sd: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    layers = sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})
    if layers and layers != list(range(len(layers))):
        raise CheckpointError(
            f"{prefix}<i> blocks are not numbered 0..{len(layers) - 1} (found {layers})"
        )
    return len(layers)


def _clip_part(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {
        k.removeprefix("clip."): v
        for k, v in sd.items()
        if k.startswith("clip.") and k.removeprefix("clip.") not in _NON_WEIGHTS
    }


def describe_official(sd: Mapping[str, Tensor]) -> OfficialLayout:
    """The layout of an official state dict (``module.`` already stripped).

    Raises CheckpointError when the keys mix heads that cannot go together or miss a part.
    """
    xclip = [k for k in XCLIP_MATRICES if k in sd]
    if xclip and len(xclip) != len(XCLIP_MATRICES):
        missing = [k for k in XCLIP_MATRICES if k not in sd]
        raise CheckpointError(f"an X-CLIP head needs all eight matrices; missing {missing}")
    temporal = _stack_depth(sd, "transformerClip.resblocks.")
    cross = _stack_depth(sd, "cross.transformer.resblocks.")
    lstm = any(k.startswith("lstm_visual.") for k in sd)
    has_cross = cross > 0 or any(k.startswith(("cross.", "similarity_dense.")) for k in sd)
    heads = [
        name
        for name, present in (
            ("the X-CLIP matrices", bool(xclip)),
            ("transformerClip (seqTransf)", temporal > 0 and not xclip),
            ("lstm_visual (seqLSTM)", lstm),
            ("cross.* (tightTransf)", has_cross),
        )
        if present
    ]
    if len(heads) > 1:
        raise CheckpointError(
            f"the checkpoint holds {' and '.join(heads)}; vtrkit's X-CLIP uses the seqTransf "
            "temporal encoder or none, and CLIP4Clip has one similarity head"
        )
    if has_cross and cross == 0:
        raise CheckpointError("cross.* keys without cross.transformer.resblocks.<i> blocks")
    if temporal and "frame_position_embeddings.weight" not in sd:
        raise CheckpointError("transformerClip blocks without frame_position_embeddings.weight")
    if xclip:
        kind = "xclip"
    elif has_cross:
        kind = "tightTransf"
    elif lstm:
        kind = "seqLSTM"
    elif temporal:
        kind = "seqTransf"
    else:
        kind = "meanP"
    return OfficialLayout(
        source="X-CLIP" if xclip else "CLIP4Clip",
        kind=kind,
        temporal_layers=temporal,
        cross_layers=cross,
        type_embedding="cross.embeddings.token_type_embeddings.weight" in sd,
        num_frames=int(sd["frame_logit_weight"].shape[0]) if xclip else None,
        max_words=int(sd["word_logit_weight"].shape[0]) if xclip else None,
        arch=infer_arch(_clip_part(sd)),
    )


def _map_stack(sd: Mapping[str, Tensor], official: str, vtrkit: str) -> dict[str, Tensor]:
    """Convert one official block stack (OpenAI block names) to vtrkit's (HF layer names)."""
    renamed = {
        "transformer.resblocks." + k.removeprefix(official): v
        for k, v in sd.items()
        if k.startswith(official)
    }
    out = {}
    for key, value in openai_to_hf(renamed).items():
        if not key.startswith(_HF_TEXT_LAYERS):
            raise CheckpointError(
                f"unknown key {official}{key.removeprefix('transformer.resblocks.')}: not a "
                "residual attention block parameter"
            )
        out[vtrkit + key.removeprefix(_HF_TEXT_LAYERS)] = value
    return out


def official_to_vtrkit(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and split / transpose) an official state dict into vtrkit model keys.

    Raises CheckpointError naming every key that has no place in a vtrkit model.
    """
    sd = strip_wrapper(sd)
    kind = describe_official(sd).kind
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in openai_to_hf(_clip_part(sd)).items():
        if _HF_CLIP_KEY.match(key):
            out[_TOWERS + key] = value
        else:
            unknown.append("clip." + key)
    for official, vtrkit in _STACKS.items():
        out |= _map_stack(sd, official, vtrkit)
    for key, value in sd.items():
        if key.startswith("clip.") or any(key.startswith(p) for p in _STACKS):
            continue
        if key == "frame_position_embeddings.weight" and kind == "seqLSTM":
            logger.info("%s: unused by the official seqLSTM forward; left out", key)
        elif key in _FIXED:
            out[_FIXED[key]] = value
        elif key.startswith("lstm_visual.") and key.removeprefix("lstm_visual.") in _LSTM:
            out["temporal.lstm." + key.removeprefix("lstm_visual.")] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys of the official checkpoint have no place in a vtrkit "
            f"{kind} model: {', '.join(sorted(unknown)[:12])}"
        )
    return out


def vtrkit_to_official(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`official_to_vtrkit`: a vtrkit model's state dict in the official layout
    (what the official code would save for the same weights)."""
    out: dict[str, Tensor] = {}
    towers = {k.removeprefix(_TOWERS): v for k, v in sd.items() if k.startswith(_TOWERS)}
    out |= {"clip." + k: v for k, v in hf_to_openai(towers).items()}
    for official, vtrkit in _STACKS.items():
        stack = {
            _HF_TEXT_LAYERS + k.removeprefix(vtrkit): v
            for k, v in sd.items()
            if k.startswith(vtrkit)
        }
        for key, value in hf_to_openai(stack).items():
            out[official + key.removeprefix("transformer.resblocks.")] = value
    unknown = []
    for key, value in sd.items():
        if key.startswith(_TOWERS) or any(key.startswith(v) for v in _STACKS.values()):
            continue
        if key in _FIXED_INV:
            out[_FIXED_INV[key]] = value
        elif key.startswith("temporal.lstm.") and key.removeprefix("temporal.lstm.") in _LSTM:
            out["lstm_visual." + key.removeprefix("temporal.lstm.")] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys have no place in an official X-CLIP/CLIP4Clip checkpoint "
            f"(only meanP, seqLSTM, seqTransf, tightTransf and X-CLIP exist there): "
            f"{', '.join(sorted(unknown)[:12])}"
        )
    return out


def official_name(key: str) -> str:
    """The official name of a vtrkit model key (for error messages); unknown keys unchanged."""
    if key.startswith(_TOWERS):
        return "clip." + openai_name(key.removeprefix(_TOWERS))
    for official, vtrkit in _STACKS.items():
        if key.startswith(vtrkit):
            name = openai_name(_HF_TEXT_LAYERS + key.removeprefix(vtrkit))
            return official + name.removeprefix("transformer.resblocks.")
    if key in _FIXED_INV:
        return _FIXED_INV[key]
    if key.startswith("temporal.lstm."):
        return "lstm_visual." + key.removeprefix("temporal.lstm.")
    return key


def official_config(layout: OfficialLayout, path: Path) -> Config:
    """The Config that rebuilds an official checkpoint's model.

    The model section is what the keys say (kind, temporal / cross-encoder depth, CLIP shape,
    heads width // 64 as the official code). Data settings cannot be read from weights: Nf and
    Nw come from the X-CLIP matrices, else CLIP4Clip's MSR-VTT defaults Nf = 12, Nw = 32; the
    image size is the backbone's; the dataset is vtrkit's default (override ``data.*``).
    """
    cfg = Config()
    cfg.name = f"official-{layout.source.lower()}-{path.name}"
    cfg.model.kind = layout.kind  # type: ignore[assignment]
    cfg.model.backbone.arch = layout.arch
    cfg.model.temporal = layout.temporal_layers > 0
    if layout.temporal_layers:
        cfg.model.temporal_layers = layout.temporal_layers
    if layout.cross_layers:
        cfg.model.tight.layers = layout.cross_layers
        cfg.model.tight.type_embedding = layout.type_embedding
        cfg.model.tight.init_from_clip = False  # every weight comes from the checkpoint
    cfg.data.num_frames = layout.num_frames or 12
    cfg.data.max_words = layout.max_words or 32
    cfg.data.image_size = layout.arch.image_size
    return cfg
