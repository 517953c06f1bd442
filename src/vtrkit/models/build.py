"""Build a retrieval model and its tokenizer from the ``model`` and ``data`` config sections."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vtrkit.config import DataConfig, ModelConfig
from vtrkit.models.base import RetrievalModel
from vtrkit.models.meanpool import Clip4Clip
from vtrkit.models.seqlstm import SeqLstmEncoder
from vtrkit.models.temporal import TemporalEncoder, default_heads
from vtrkit.models.tight_transformer import CrossEncoder, TightTransformer
from vtrkit.models.xclip import XClip
from vtrkit.models.xclip_head import XClipHead

if TYPE_CHECKING:  # the backbone package imports transformers; load it only when building
    from vtrkit.backbones.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_FRAME_POSITIONS = 77
"""Rows of the frame-position table: CLIP's text context length, whose embedding initialises it."""


def build_temporal(cfg: ModelConfig, width: int, towers: object) -> TemporalEncoder | None:
    """The seqTransf encoder initialised from the CLIP text layers, or None when switched off
    (``model.temporal: false`` or ``model.temporal_layers: 0``). Heads: ``model.temporal_heads``,
    by default width // 64 as the official TransformerClip."""
    if not cfg.temporal or cfg.temporal_layers == 0:
        return None
    heads = default_heads(width, cfg.temporal_heads)
    if width % heads != 0:
        raise ValueError(
            f"model.temporal_heads={heads} does not divide the embedding width {width}; "
            "pick a divisor"
        )
    encoder = TemporalEncoder(width, heads, cfg.temporal_layers, MAX_FRAME_POSITIONS)
    encoder.init_from_clip(towers)  # type: ignore[arg-type]
    return encoder


def build_tight(cfg: ModelConfig, width: int, towers: object) -> TightTransformer:
    """tightTransf: the cross-encoder of ``model.tight``, initialised as the released code."""
    tight = cfg.tight
    cross = CrossEncoder(
        width, tight.layers, tight.heads, MAX_FRAME_POSITIONS, tight.type_embedding
    )
    if tight.init_from_clip:
        cross.init_from_clip(towers)  # type: ignore[arg-type]
    return TightTransformer(towers, cross, tight.text_tokens)  # type: ignore[arg-type]


def build_model(cfg: ModelConfig, data: DataConfig) -> tuple[RetrievalModel, Tokenizer]:
    """Model of kind ``cfg.kind`` on CLIP towers from ``cfg.backbone``, with its tokenizer.

    ``data.num_frames`` (Nf) and ``data.max_words`` (Nw) size the temporal position table and the
    X-CLIP mixing matrices, so a model must be used with the same values it was built with.
    """
    if cfg.kind == "videoclip":
        raise ValueError(
            "model.kind=videoclip trains on stored per-second features, not frames: use "
            "`vtrkit videoclip-train` (vtrkit.videoclip)"
        )
    if data.num_frames > MAX_FRAME_POSITIONS:
        raise ValueError(
            f"data.num_frames={data.num_frames} exceeds the {MAX_FRAME_POSITIONS} frame positions "
            "of the temporal encoder; lower it"
        )
    # Imported here so that the heads and encoders import without the backbone's dependencies.
    from vtrkit.backbones.clip import build_clip

    towers, tokenizer = build_clip(cfg.backbone)
    width = towers.embed_dim
    if cfg.kind == "meanP":
        model: RetrievalModel = Clip4Clip(towers, None)
    elif cfg.kind == "seqLSTM":
        model = Clip4Clip(towers, SeqLstmEncoder(width))
    elif cfg.kind == "tightTransf":
        model = build_tight(cfg, width, towers)
    elif cfg.kind == "seqTransf":
        temporal = build_temporal(cfg, width, towers)
        if temporal is None:
            log.warning("model.kind=seqTransf with the temporal encoder off is meanP")
        model = Clip4Clip(towers, temporal)
    elif cfg.kind == "clip2tv":
        from vtrkit.models.clip2tv import Clip2TV

        vta = Clip4Clip(towers, build_temporal(cfg, width, towers))
        model = Clip2TV(vta, width, cfg.clip2tv)
    elif cfg.kind == "xclip":
        head = XClipHead(width, data.max_words, data.num_frames, cfg.xclip)
        model = XClip(towers, build_temporal(cfg, width, towers), head)
    else:
        raise ValueError(
            f"unknown model.kind {cfg.kind!r}; use meanP, seqLSTM, seqTransf, tightTransf, "
            "xclip, clip2tv or videoclip"
        )
    return model, tokenizer
