"""VideoCLIP: a dual encoder over per-second video tokens and text (SPEC §3).

Shapes: B pairs, Nv video token slots (≤ 32 seconds), d_in per-second feature width,
Lt text slots ([CLS] + ≤ 61 tokens + [SEP]), H transformer width.

- Video: per-second features → token MLP (Linear → GELU → LayerNorm → Linear) → BERT-style
  transformer over ``[CLS] + tokens + [SEP]`` (the [CLS]/[SEP] vectors are the transformer's own word
  embeddings, fed through ``inputs_embeds`` so position and type embeddings are added as for text).
- Text: any local Hugging Face encoder (``AutoModel`` from a folder, never downloaded) or a small
  randomly initialised BERT.
- Pooling: mean over the valid tokens *and* [SEP], excluding [CLS]; no L2 normalisation.
- Score: dot product. Loss: symmetric InfoNCE with temperature 1 (text→video only for fine-tuning).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModel, BertConfig, BertModel, PreTrainedModel

from vtrkit.config import VideoClipConfig

log = logging.getLogger(__name__)

# Rows of the video transformer's 3-entry vocabulary (row 0 is the padding row BERT reserves).
VIDEO_CLS = 1
VIDEO_SEP = 2


class TokenMLP(nn.Module):
    """Per-second feature [.., d_in] → transformer token [.., H]: Linear–GELU–LayerNorm–Linear.

    The input is first standardised per dimension with stored statistics (identity until
    :meth:`set_feature_stats` is called). That affine map could be folded into the first Linear,
    so the function class is the published one; it only conditions the optimisation, which matters
    for features whose variation is small next to their mean (e.g. a randomly initialised CLIP's).
    """

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(d_in))
        self.register_buffer("feature_scale", torch.ones(d_in))
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, hidden)
        )

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs with per-dimension ``mean`` [d_in] and ``std`` [d_in]."""
        with torch.no_grad():
            self.feature_mean.copy_(mean)
            self.feature_scale.copy_(1.0 / std.clamp(min=1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.feature_mean) * self.feature_scale)


def pool_tokens(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` [B, L, H] over valid positions except position 0 ([CLS]) → [B, H].

    ``mask`` [B, L] bool marks [CLS], the real tokens and [SEP]; so [SEP] is averaged in.
    """
    valid = mask.clone()
    valid[:, 0] = False
    weights = valid.to(hidden.dtype).unsqueeze(-1)
    count = weights.sum(1).clamp(min=1.0)
    return (hidden * weights).sum(1) / count


def check_left_aligned(mask: Tensor, name: str) -> Tensor:
    """Lengths [B] of a left-aligned mask [B, L]; raises if a row has holes or is empty."""
    lengths = mask.sum(1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions[None] < lengths[:, None]):
        raise ValueError(f"{name} must mark a contiguous prefix of each row (left-aligned padding)")
    if bool((lengths == 0).any()):
        raise ValueError(f"{name} has a row with no valid position")
    return lengths


class VideoClipModel(nn.Module):
    """Dual encoder of SPEC §3. ``video_encoder`` is ``text_encoder`` itself when weights are shared."""

    def __init__(
        self,
        text_encoder: PreTrainedModel,
        video_encoder: PreTrainedModel,
        token_mlp: TokenMLP,
        video_cls_id: int,
        video_sep_id: int,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.shared = video_encoder is text_encoder
        if not self.shared:
            self.video_encoder = video_encoder
        self.token_mlp = token_mlp
        self.video_cls_id = video_cls_id
        self.video_sep_id = video_sep_id

    @property
    def hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    def _video_transformer(self) -> PreTrainedModel:
        return self.text_encoder if self.shared else self.video_encoder

    def encode_text(self, input_ids: Tensor, text_mask: Tensor) -> Tensor:
        """Token ids [T, Lt] ([CLS] ... [SEP], right-padded) and mask [T, Lt] → pooled [T, H]."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=text_mask.long())
        return pool_tokens(out.last_hidden_state, text_mask)

    def video_hidden(self, video_feats: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-second features [V, Nv, d_in] with mask [V, Nv] → (states [V, Nv+2, H], mask).

        Position 0 is [CLS], positions 1..n the n real seconds, position n+1 [SEP].
        """
        lengths = check_left_aligned(video_mask, "video_mask")
        n_videos, n_slots = video_mask.shape
        transformer = self._video_transformer()
        table = transformer.get_input_embeddings().weight
        tokens = self.token_mlp(video_feats.to(table.dtype)) * video_mask.unsqueeze(-1)
        cls = table[self.video_cls_id].expand(n_videos, 1, -1)
        x = torch.cat([cls, tokens, torch.zeros_like(cls)], dim=1)
        positions = torch.arange(n_slots + 2, device=x.device)
        sep_here = (positions[None] == (lengths + 1)[:, None]).unsqueeze(-1)
        x = torch.where(sep_here, table[self.video_sep_id], x)
        full_mask = positions[None] < (lengths + 2)[:, None]
        out = transformer(inputs_embeds=x, attention_mask=full_mask.long())
        return out.last_hidden_state, full_mask

    def encode_video(self, video_feats: Tensor, video_mask: Tensor) -> Tensor:
        """Per-second features [V, Nv, d_in] and mask [V, Nv] → pooled [V, H]."""
        hidden, mask = self.video_hidden(video_feats, video_mask)
        return pool_tokens(hidden, mask)

    def second_states(self, video_feats: Tensor, video_mask: Tensor) -> Tensor:
        """Contextualised state of every second [V, Nv, H] (for step localisation)."""
        hidden, _ = self.video_hidden(video_feats, video_mask)
        return hidden[:, 1:-1]

    @staticmethod
    def similarity(text: Tensor, video: Tensor) -> Tensor:
        """Dot-product scores [T, V] of pooled text [T, H] and video [V, H]."""
        return text @ video.T

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, new). The frozen feature extractor lives outside the model, so every
        parameter here trains at the "new" learning rate, as VideoCLIP trains all of them alike."""
        return [], [p for p in self.parameters() if p.requires_grad]


def load_text_encoder(folder: Path) -> PreTrainedModel:
    """``AutoModel`` from a local Hugging Face folder; never downloads."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.videoclip.text_encoder: {folder} is not a Hugging Face model folder "
            "(no config.json); point it at a local encoder checkpoint or set it to null for a "
            "randomly initialised BERT"
        )
    return AutoModel.from_pretrained(folder, local_files_only=True)


def random_text_encoder(cfg: VideoClipConfig, vocab_size: int, pad_id: int) -> BertModel:
    """A randomly initialised BERT of the configured width and depth (tests, synthetic demo)."""
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.heads,
        intermediate_size=4 * cfg.hidden,
        max_position_embeddings=max(64, cfg.max_text_tokens + 2),
        pad_token_id=pad_id,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )
    return BertModel(config, add_pooling_layer=False)


def video_transformer_for(text_encoder: PreTrainedModel, cfg: VideoClipConfig) -> BertModel:
    """A BERT of the text encoder's width with ``cfg.video_layers`` layers and a 3-row vocabulary."""
    tc = text_encoder.config
    hidden = int(tc.hidden_size)
    config = BertConfig(
        vocab_size=3,
        hidden_size=hidden,
        num_hidden_layers=cfg.video_layers,
        num_attention_heads=int(getattr(tc, "num_attention_heads", cfg.heads)),
        intermediate_size=int(getattr(tc, "intermediate_size", 4 * hidden)),
        max_position_embeddings=max(64, cfg.max_video_tokens + 2),
        pad_token_id=0,
        hidden_dropout_prob=float(getattr(tc, "hidden_dropout_prob", cfg.dropout)),
        attention_probs_dropout_prob=float(
            getattr(tc, "attention_probs_dropout_prob", cfg.dropout)
        ),
    )
    return BertModel(config, add_pooling_layer=False)


def init_video_from_text(video: BertModel, text: PreTrainedModel, cls_id: int, sep_id: int) -> bool:
    """Copy the text BERT's embeddings and first layers into the video BERT (as VideoCLIP initialises
    both towers from one BERT). Returns False (and copies nothing) when the shapes do not match."""
    if not isinstance(text, BertModel) or video.config.num_hidden_layers > len(text.encoder.layer):
        return False
    if video.config.hidden_size != text.config.hidden_size:
        return False
    with torch.no_grad():
        v_emb, t_emb = video.embeddings, text.embeddings
        if t_emb.position_embeddings.weight.shape[0] < v_emb.position_embeddings.weight.shape[0]:
            return False
        rows = v_emb.position_embeddings.weight.shape[0]
        v_emb.position_embeddings.weight.copy_(t_emb.position_embeddings.weight[:rows])
        v_emb.token_type_embeddings.weight.copy_(t_emb.token_type_embeddings.weight[:2])
        v_emb.LayerNorm.load_state_dict(t_emb.LayerNorm.state_dict())
        v_emb.word_embeddings.weight[VIDEO_CLS].copy_(t_emb.word_embeddings.weight[cls_id])
        v_emb.word_embeddings.weight[VIDEO_SEP].copy_(t_emb.word_embeddings.weight[sep_id])
        for v_layer, t_layer in zip(video.encoder.layer, text.encoder.layer, strict=False):
            v_layer.load_state_dict(t_layer.state_dict())
    return True


def build_videoclip(
    cfg: VideoClipConfig, vocab_size: int, cls_id: int, sep_id: int, pad_id: int = 0
) -> VideoClipModel:
    """The model of ``cfg``; ``vocab_size`` and the special ids come from its text tokenizer."""
    if cfg.text_encoder is not None:
        text = load_text_encoder(cfg.text_encoder)
    else:
        text = random_text_encoder(cfg, vocab_size, pad_id)
    hidden = int(text.config.hidden_size)
    if cfg.shared:
        video: PreTrainedModel = text
        video_cls, video_sep = cls_id, sep_id
    else:
        video = video_transformer_for(text, cfg)
        video_cls, video_sep = VIDEO_CLS, VIDEO_SEP
        if cfg.video_init_from_text and init_video_from_text(video, text, cls_id, sep_id):
            log.info("video transformer initialised from the text encoder's first layers")
    return VideoClipModel(
        text_encoder=text,
        video_encoder=video,
        token_mlp=TokenMLP(cfg.d_in, hidden),
        video_cls_id=video_cls,
        video_sep_id=video_sep,
    )
