"""CLIP image and text towers on Hugging Face ``CLIPModel``, as the retrieval models use them.

Shapes: N images, S image size, T texts, Nw word slots, W text width, D embedding width.

The towers call the submodules directly (``vision_model`` + ``visual_projection``, ``text_model``
+ ``text_projection``) because the heads need per-token text features, which the pooled
``get_text_features`` output does not give. The text transformer keeps CLIP's causal mask and no
padding mask, exactly as OpenAI CLIP and the CLIP4Clip lineage run it: padding comes after the end
token, so it cannot change the real tokens' states, while the padded positions' own states (which
X-CLIP's word features include) match the released code.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from transformers import CLIPModel

from vtrkit.backbones.checkpoints import load_clip_model
from vtrkit.backbones.convert import clip_config
from vtrkit.backbones.tokenizer import Tokenizer, load_tokenizer
from vtrkit.config import BackboneConfig, ClipArch

logger = logging.getLogger(__name__)


class ClipTowers(nn.Module):
    """The two CLIP towers and the learned temperature, wrapping a Hugging Face ``CLIPModel``.

    Attributes: ``embed_dim`` (D), ``image_size`` (S), ``context_length`` (rows of the text
    positional table), ``vocab_size``, ``text_width`` (W), ``vision_width``.
    """

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.embed_dim: int = config.projection_dim
        self.image_size: int = config.vision_config.image_size
        self.context_length: int = config.text_config.max_position_embeddings
        self.vocab_size: int = config.text_config.vocab_size
        self.text_width: int = config.text_config.hidden_size
        self.vision_width: int = config.vision_config.hidden_size

    @property
    def text_layers(self) -> nn.ModuleList:
        """The text transformer's ``CLIPEncoderLayer`` blocks (used to initialise new blocks)."""
        return self.model.text_model.encoder.layers

    @property
    def text_positional_embedding(self) -> nn.Parameter:
        """The text positional table [context_length, W]."""
        return self.model.text_model.embeddings.position_embedding.weight

    @property
    def logit_scale(self) -> nn.Parameter:
        """log λ, the learned inverse temperature (scalar parameter)."""
        return self.model.logit_scale

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass (saves memory, costs one forward)."""
        model = self.model
        # transformers 5.x renamed gradient_* to activation_checkpointing_*; the old names warn.
        if hasattr(model, "activation_checkpointing_enable"):
            if enabled:
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.activation_checkpointing_disable()
        elif enabled:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()

    @property
    def grad_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.text_layers)

    def encode_image(self, pixels: Tensor) -> Tensor:
        """Projected class token of normalised images.

        pixels: [N, 3, S, S] float. Returns [N, D]: ``ln_post(class token) @ proj``, not normalised.
        """
        s = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(
                f"encode_image expects pixels [N, 3, {s}, {s}], got {tuple(pixels.shape)}; "
                f"set data.image_size to {s} for this backbone"
            )
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def encode_text(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Sentence and word features of tokenized texts.

        ids: [T, Nw] long; mask: [T, Nw] bool, True at start, tokens and end (end token at
        ``mask.sum(1) - 1``). Nw <= context_length; the first Nw positional rows are used.
        Returns ``sentence`` [T, D] (the end token's feature) and ``words`` [T, Nw, D]
        (``text_projection(ln_final(hidden))`` at every slot, padding included), not normalised.
        """
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"encode_text expects ids and mask of one shape [T, Nw], got "
                f"{tuple(ids.shape)} and {tuple(mask.shape)}"
            )
        if ids.shape[1] > self.context_length:
            raise ValueError(
                f"{ids.shape[1]} word slots exceed the text context of {self.context_length}; "
                f"set data.max_words <= {self.context_length}"
            )
        lengths = mask.sum(1)
        if ids.shape[0] and bool((lengths == 0).any()):
            raise ValueError("a text has an all-False mask; every row needs start and end tokens")
        # No attention_mask: text_model then applies only the causal mask, as CLIP does.
        hidden = self.model.text_model(input_ids=ids).last_hidden_state  # ln_final applied
        words = self.model.text_projection(hidden)
        rows = torch.arange(ids.shape[0], device=ids.device)
        sentence = words[rows, lengths - 1]
        return sentence, words


def clip_from_arch(arch: ClipArch, hidden_act: str = "quick_gelu") -> ClipTowers:
    """Randomly initialised towers of shape ``arch``, initialised as OpenAI's CLIP is.

    Hugging Face's ``CLIPModel`` initialises the image positional table with std 0.02; OpenAI's
    CLIP uses ``width ** -0.5`` (0.088 at width 128), as for the class embedding. The difference
    matters when patches line up with the objects' positions: on 48-px stills with 16-px patches
    (one patch per cell of the 3x3 position grid), pretraining from the 0.02 table left the
    position probe at 25 % (chance 13) after 400 steps, because a patch's content is then the same
    in every cell and only the positional table tells the cells apart.
    """
    model = CLIPModel(clip_config(arch, hidden_act))
    table = model.vision_model.embeddings.position_embedding.weight
    with torch.no_grad():
        table.normal_(0.0, arch.vision_width**-0.5)
    return ClipTowers(model)


def build_clip(cfg: BackboneConfig) -> tuple[ClipTowers, Tokenizer]:
    """CLIP towers and their tokenizer as ``cfg`` describes.

    ``cfg.checkpoint`` (any supported format, detected from the file) takes precedence; otherwise
    ``cfg.arch`` gives a randomly initialised model. The tokenizer is ``cfg.tokenizer`` or the
    vendored CLIP vocabulary; its ids must fit the model's token table.
    """
    if cfg.checkpoint is not None:
        if cfg.arch is not None:
            logger.warning("model.backbone.arch is ignored because a checkpoint is given")
        model = load_clip_model(cfg.checkpoint, cfg.hidden_act, cfg.vision_heads, cfg.text_heads)
        towers = ClipTowers(model)
    elif cfg.arch is not None:
        towers = clip_from_arch(cfg.arch, cfg.hidden_act)
    else:
        raise ValueError(
            "model.backbone needs either checkpoint (a CLIP checkpoint path) or arch "
            "(the shape of a randomly initialised CLIP)"
        )
    tokenizer = load_tokenizer(cfg.tokenizer)
    vocab = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and vocab > towers.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab} tokens but the CLIP token table has {towers.vocab_size} "
            "rows; set model.backbone.arch.vocab_size (or model.backbone.tokenizer) to match"
        )
    towers.set_grad_checkpointing(cfg.grad_checkpointing)
    return towers.eval(), tokenizer
