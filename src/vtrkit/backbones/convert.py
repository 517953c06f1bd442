"""Pure translations between OpenAI CLIP state dicts and Hugging Face ``CLIPModel`` ones.

OpenAI (and open_clip) name the towers ``visual.*`` / ``transformer.*`` and differ from Hugging
Face in three ways that change tensors, not just names:

* attention uses one fused ``attn.in_proj_weight`` [3W, W] (and ``in_proj_bias`` [3W]) holding
  query, key and value stacked in that order; Hugging Face has separate ``q/k/v_proj``;
* ``visual.proj`` [W, D] and ``text_projection`` [W, D] are applied as ``x @ P``, while Hugging
  Face's projections are ``nn.Linear`` with weight [D, W], i.e. ``P.T``;
* the architecture is not stored: it is read off tensor shapes (``infer_arch``), as OpenAI's
  ``build_model`` does.

Keys neither side knows pass through unchanged, so the loader can report them as unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import CLIPConfig

from vtrkit.config import ClipArch


class CheckpointError(ValueError):
    """A checkpoint is not a usable CLIP checkpoint; the message names the file and key at fault."""


# One-to-one renames outside the residual blocks (OpenAI name -> Hugging Face name).
_TOP_LEVEL = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# Projections stored as x @ P by OpenAI, as Linear weights (P.T) by Hugging Face.
_TRANSPOSED = {
    "visual.proj": "visual_projection.weight",
    "text_projection": "text_projection.weight",
}
# Renames inside one residual block (suffix after the layer prefix).
_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_FUSED = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}
_QKV = ("q_proj", "k_proj", "v_proj")

_OPENAI_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")

_TOP_LEVEL_INV = {v: k for k, v in _TOP_LEVEL.items()}
_TRANSPOSED_INV = {v: k for k, v in _TRANSPOSED.items()}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}


def _hf_block_prefix(visual: bool, layer: str) -> str:
    return f"{'vision_model' if visual else 'text_model'}.encoder.layers.{layer}."


def _openai_block_prefix(tower: str, layer: str) -> str:
    return f"{'visual.' if tower == 'vision_model' else ''}transformer.resblocks.{layer}."


def openai_to_hf(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and split / transpose) an OpenAI CLIP state dict into ``CLIPModel`` keys.

    ``attn.in_proj_weight`` [3W, W] becomes q/k/v_proj.weight [W, W] each (bias likewise);
    ``visual.proj`` and ``text_projection`` [W, D] become Linear weights [D, W]. Unknown keys are
    returned unchanged. The input is not modified.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif (m := _OPENAI_BLOCK.match(key)) and m.group(3) in _BLOCK:
            out[_hf_block_prefix(bool(m.group(1)), m.group(2)) + _BLOCK[m.group(3)]] = value
        elif m and m.group(3) in _FUSED:
            prefix = _hf_block_prefix(bool(m.group(1)), m.group(2)) + "self_attn."
            if value.shape[0] % 3:
                raise CheckpointError(
                    f"{key} has {value.shape[0]} rows, which is not 3 x width (query, key, value)"
                )
            # clone: chunks share storage, which safetensors refuses to save
            for name, part in zip(_QKV, value.chunk(3, dim=0), strict=True):
                out[f"{prefix}{name}.{_FUSED[m.group(3)]}"] = part.clone()
        else:
            out[key] = value
    return out


def hf_to_openai(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`openai_to_hf`: ``CLIPModel`` keys to OpenAI CLIP keys.

    q/k/v projections of a block are fused into ``attn.in_proj_*`` when all three are present
    (otherwise they pass through under their Hugging Face names); projections are transposed.
    """
    out: dict[str, Tensor] = {}
    pending: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _TOP_LEVEL_INV:
            out[_TOP_LEVEL_INV[key]] = value
        elif key in _TRANSPOSED_INV:
            out[_TRANSPOSED_INV[key]] = value.t().contiguous()
        elif (m := _HF_BLOCK.match(key)) and m.group(3) in _BLOCK_INV:
            out[_openai_block_prefix(m.group(1), m.group(2)) + _BLOCK_INV[m.group(3)]] = value
        elif m and (q := _HF_QKV.match(m.group(3))):
            fused = _openai_block_prefix(m.group(1), m.group(2)) + f"attn.in_proj_{q.group(2)}"
            pending.setdefault((fused, key.rsplit(".", 3)[0]), {})[q.group(1)] = value
        else:
            out[key] = value
    for (fused, hf_prefix), parts in pending.items():
        if set(parts) == {"q", "k", "v"}:
            out[fused] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        else:
            suffix = fused.rsplit("_", 1)[1]
            for letter, value in parts.items():
                out[f"{hf_prefix}.self_attn.{letter}_proj.{suffix}"] = value
    return out


def openai_name(hf_key: str) -> str:
    """The OpenAI name a ``CLIPModel`` key comes from (q/k/v map to the fused in_proj key)."""
    if hf_key in _TOP_LEVEL_INV:
        return _TOP_LEVEL_INV[hf_key]
    if hf_key in _TRANSPOSED_INV:
        return _TRANSPOSED_INV[hf_key]
    m = _HF_BLOCK.match(hf_key)
    if m is None:
        return hf_key
    prefix = _openai_block_prefix(m.group(1), m.group(2))
    if m.group(3) in _BLOCK_INV:
        return prefix + _BLOCK_INV[m.group(3)]
    if q := _HF_QKV.match(m.group(3)):
        return prefix + f"attn.in_proj_{q.group(2)}"
    return hf_key


def _require(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(
            f"missing {key}: not an OpenAI/open_clip CLIP state dict (keys look like "
            f"{', '.join(list(sd)[:4])}, ...)"
        )
    return sd[key]


def _count_blocks(sd: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pattern.match(k))})


def infer_arch(
    sd: Mapping[str, Tensor], vision_heads: int | None = None, text_heads: int | None = None
) -> ClipArch:
    """Read a ViT CLIP's architecture off an OpenAI/open_clip state dict's tensor shapes.

    Widths, depths, patch size, grid (hence image size), context length, vocabulary, embedding
    width and MLP widths are all determined by shapes. Head counts are not: they default to
    width // 64 as in OpenAI's ``build_model`` unless given.
    """
    if "visual.conv1.weight" not in sd and any(k.startswith("visual.layer1.") for k in sd):
        raise CheckpointError(
            "this is a ResNet CLIP (RN50/RN101/...): only ViT backbones are supported"
        )
    conv = _require(sd, "visual.conv1.weight")
    vision_width, patch = conv.shape[0], conv.shape[-1]
    positions = _require(sd, "visual.positional_embedding").shape[0] - 1
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise CheckpointError(
            f"visual.positional_embedding has {positions} patch rows, not a square grid"
        )
    text_width = _require(sd, "ln_final.weight").shape[0]
    vision_layers = _count_blocks(sd, "visual.transformer.resblocks.")
    text_layers = _count_blocks(sd, "transformer.resblocks.")
    if vision_layers == 0 or text_layers == 0:
        raise CheckpointError("no residual blocks found (visual.)transformer.resblocks.N.*")
    vheads = vision_heads or max(1, vision_width // 64)
    theads = text_heads or max(1, text_width // 64)
    for name, width, heads in (("vision", vision_width, vheads), ("text", text_width, theads)):
        if width % heads:
            raise CheckpointError(
                f"{name} width {width} is not divisible by {heads} heads; set "
                f"model.backbone.{name}_heads to the checkpoint's head count"
            )
    return ClipArch(
        embed_dim=_require(sd, "text_projection").shape[1],
        image_size=patch * grid,
        patch_size=patch,
        vision_width=vision_width,
        vision_layers=vision_layers,
        vision_heads=vheads,
        text_width=text_width,
        text_layers=text_layers,
        text_heads=theads,
        context_length=_require(sd, "positional_embedding").shape[0],
        vocab_size=_require(sd, "token_embedding.weight").shape[0],
        vision_mlp_dim=_require(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        text_mlp_dim=_require(sd, "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
    )


def clip_config(arch: ClipArch, hidden_act: str = "quick_gelu") -> CLIPConfig:
    """Hugging Face ``CLIPConfig`` (SDPA attention) for a CLIP of shape ``arch``.

    BOS/EOS are the last two vocabulary ids, as in CLIP's 49,408-token vocabulary (49406/49407);
    the towers never use them (the end token is located from the text mask).
    """
    text = {
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.text_width,
        "intermediate_size": arch.text_mlp_dim or 4 * arch.text_width,
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.text_heads,
        "max_position_embeddings": arch.context_length,
        "hidden_act": hidden_act,
        "projection_dim": arch.embed_dim,
        "bos_token_id": arch.vocab_size - 2,
        "eos_token_id": arch.vocab_size - 1,
        "pad_token_id": 0,
    }
    vision = {
        "hidden_size": arch.vision_width,
        "intermediate_size": arch.vision_mlp_dim or 4 * arch.vision_width,
        "num_hidden_layers": arch.vision_layers,
        "num_attention_heads": arch.vision_heads,
        "image_size": arch.image_size,
        "patch_size": arch.patch_size,
        "hidden_act": hidden_act,
        "projection_dim": arch.embed_dim,
    }
    return CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=arch.embed_dim,
        attn_implementation="sdpa",
    )
