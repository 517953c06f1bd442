"""Typed run configuration: YAML files, ``--set a.b=c`` overrides and clear errors.

A run is described by one :class:`Config`. Every section forbids unknown keys, so a typo in a YAML
file or an override is rejected with the dotted key that is wrong instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vtrkit.data.sampling import FrameSampling


class ConfigError(ValueError):
    """A configuration file, key or value is wrong; the message names it and says what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DatasetName = Literal[
    "synthetic", "msrvtt", "msvd", "lsmdc", "didemo", "activitynet", "youcook2", "custom"
]


class DataConfig(_Section):
    """Where the annotations and videos are and how clips and captions are sampled."""

    dataset: DatasetName = "synthetic"
    root: Path = Path("data/synthetic")
    """Folder holding the dataset's annotation files."""
    video_dir: Path | None = None
    """Folder holding the video files; defaults to ``root/videos``."""
    annotation: Path | None = None
    """Annotation file for the ``custom`` reader (CSV or JSONL)."""
    train_split: str = "train"
    val_split: str | None = None
    """Split used to pick the best checkpoint; ``None`` falls back to the test split."""
    test_split: str = "test"
    num_frames: int = Field(12, ge=1)
    max_words: int = Field(32, ge=3)
    image_size: int = Field(224, ge=8)
    fps: float = Field(1.0, gt=0)
    window: tuple[float, float] | None = None
    """Fixed decoding window in seconds (e.g. DiDeMo's 0-31 s); per-record windows take precedence."""
    expand_sentences: bool = True
    """Training iterates over every (video, caption) pair rather than one random caption per video."""
    frame_cache: Path | None = None
    """Folder for a uint8 cache of decoded, resized frames (decode each video once)."""
    frame_cache_memory_mb: int = Field(1024, ge=0)
    """Frame-cache entries also kept in memory after their first load, up to this many MB per
    process (or loader worker); 0 reads every entry from disk each epoch."""
    num_workers: int = Field(2, ge=0)

    @property
    def sampling(self) -> FrameSampling:
        """``num_frames``, ``fps`` and ``image_size`` as the one value decoding and models take
        (the YAML keeps the three keys)."""
        return FrameSampling(self.num_frames, self.fps, self.image_size)


class ClipArch(_Section):
    """Shape of a CLIP model trained from scratch (the demo's tiny backbone)."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    vision_mlp_dim: int | None = None
    """Hidden width of the vision MLPs; None means 4 x vision_width (every OpenAI model)."""
    text_mlp_dim: int | None = None
    """Hidden width of the text MLPs; None means 4 x text_width."""


class BackboneConfig(_Section):
    """The CLIP towers: a checkpoint to load, or an architecture to initialise randomly."""

    checkpoint: Path | None = None
    """OpenAI ``.pt`` (TorchScript or state dict), open_clip state dict, a Hugging Face folder, an
    official X-CLIP/CLIP4Clip fine-tuned file (its ``clip.*`` towers), or a name resolved through
    the local Hugging Face cache: a Hub id (``openai/clip-vit-base-patch32``) or an OpenAI short
    name (``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``). A local path of that name wins; see
    :mod:`vtrkit.backbones.hub` for when a download is allowed."""
    arch: ClipArch | None = None
    """Used when ``checkpoint`` is None: a randomly initialised CLIP of this shape."""
    tokenizer: Path | None = None
    """BPE vocabulary file or HF tokenizer folder; defaults to the vendored CLIP vocabulary."""
    grad_checkpointing: bool = False
    hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    """MLP activation when vtrkit builds the towers (``arch`` or an OpenAI/open_clip state dict,
    which does not record it): OpenAI uses quick_gelu; open_clip LAION models whose name lacks
    ``-quickgelu`` use gelu. Hugging Face folders carry their own in config.json."""
    vision_heads: int | None = None
    """Vision attention heads of an OpenAI/open_clip state dict; None: width // 64 as in OpenAI's
    build_model (open_clip ViT-H/14, ViT-g/14 and ViT-bigG/14 need 16)."""
    text_heads: int | None = None
    """Text attention heads of an OpenAI/open_clip state dict; None: width // 64."""


XClipAggregation = Literal["attention", "mean-mean", "mean-max", "max-mean", "max-max"]


class XClipConfig(_Section):
    """Switches of the X-CLIP head (SPEC §1); defaults reproduce the released code."""

    video_sentence: bool = True
    video_word: bool = True
    sentence_frame: bool = True
    frame_word: bool = True
    aggregation: XClipAggregation = "attention"
    tau: float = Field(0.01, gt=0)
    mask_padding: bool = False
    frames_after_temporal: bool = False


class Clip2TVConfig(_Section):
    """Switches of CLIP2TV (SPEC §2)."""

    vtm: bool = True
    vtm_layers: int = 4
    vtm_heads: int = 8
    w_vtm: float = 1.0
    sd: bool = False
    sd_alpha: float = Field(0.4, ge=0, le=1)
    sd_alpha_ramp: Literal["epoch", "none"] = "epoch"
    """``epoch``: α rises linearly from 0 to ``sd_alpha`` over the first epoch's optimiser steps,
    as momentum distillation does (SPEC §6), so a teacher that is still the random student (EMA)
    does not pull the targets at the start; ``none``: ``sd_alpha`` from the first step."""
    sd_tau: float | None = None
    """Teacher softmax temperature; ``None`` uses the student's own 1/λ."""
    teacher: Literal["ema", "frozen"] = "ema"
    teacher_checkpoint: Path | None = None
    ema_momentum: float = Field(0.995, ge=0, le=1)
    rerank_k: int = Field(16, ge=1)
    w_rr: float = 1.0


class VideoClipConfig(_Section):
    """VideoCLIP (SPEC §3): dual transformers over per-second video tokens."""

    features: Path = Path("data/synthetic/features")
    """Folder written by ``vtrkit features`` (one float16 array per video plus index.json)."""
    d_in: int = 512
    video_layers: int = 6
    text_encoder: Path | None = None
    """Local Hugging Face encoder folder; None builds a small random BERT (tests, demo)."""
    hidden: int = 768
    heads: int = 12
    text_layers: int = 12
    max_video_tokens: int = 32
    max_text_tokens: int = 61
    shared: bool = False
    gather: bool = False
    aligned: bool = False
    """Video clip takes exactly the text span (ablation: no overlap)."""
    retrieval_augment: bool = True
    cluster_k: int = 32
    pairs_per_video: int = 16
    text_to_video_only: bool = False
    """Fine-tuning loss direction (published fine-tuning uses text->video only)."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Hidden and attention dropout of the randomly initialised BERTs (BERT's default 0.1)."""
    tokenizer: Path | None = None
    """HF tokenizer folder; default: the text encoder's folder, else a word vocabulary built
    from the training captions and saved as <output_dir>/tokenizer."""
    video_init_from_text: bool = True
    """Copy the text BERT's embeddings and first layers into the video BERT (as published)."""
    text_clip_tokens: tuple[int, int] = (8, 64)
    """Range of the target text-clip length in tokens (overlapping sampler)."""
    min_video_seconds: int = Field(3, ge=1)
    """Shortest video clip; the longest is max_video_tokens."""
    eval_mode: Literal["segment", "video", "paragraph"] = "segment"
    """Zero-shot retrieval: annotated segments; the first max_video_tokens seconds against each
    caption ("video") or against the joined narration of those seconds ("paragraph")."""
    loc_window: int = Field(32, ge=1)
    loc_stride: int = Field(16, ge=1)
    """Sliding window (seconds) and stride for step localisation."""
    standardize_features: bool = True
    """Standardise per-second features with the training set's per-dimension mean and std
    (stored in the model; an affine map the first Linear could absorb, so only conditioning)."""


class TightConfig(_Section):
    """CLIP4Clip's cross-encoder head ``tightTransf`` (SPEC §7); defaults follow the released code."""

    layers: int = Field(4, ge=1)
    heads: int | None = Field(None, ge=1)
    """Attention heads; None: width // 64 (8 for D = 512, the released cross-base config)."""
    text_tokens: Literal["sentence", "words"] = "sentence"
    """What the text contributes to the joint sequence: the sentence feature as one token (the
    released code), or every projected token state with the text padding mask."""
    type_embedding: bool = False
    """Add a learned text/video type embedding (the paper; the released code has it commented
    out, so official checkpoints have none)."""
    init_from_clip: bool = True
    """Initialise the position table and blocks from CLIP's text tower where shapes match, as the
    released code does; False keeps a fresh random initialisation."""


ModelKind = Literal["meanP", "seqLSTM", "seqTransf", "tightTransf", "xclip", "clip2tv", "videoclip"]


class ModelConfig(_Section):
    kind: ModelKind = "xclip"
    backbone: BackboneConfig = BackboneConfig()
    temporal: bool = True
    """Use the temporal transformer (meanP ignores this: it has none)."""
    temporal_layers: int = Field(4, ge=0)
    temporal_heads: int | None = Field(None, ge=1)
    """Attention heads of the temporal encoder; None: width // 64 as the official TransformerClip
    (8 for D = 512). Must divide the embedding width."""
    tight: TightConfig = TightConfig()
    xclip: XClipConfig = XClipConfig()
    clip2tv: Clip2TVConfig = Clip2TVConfig()
    videoclip: VideoClipConfig = VideoClipConfig()


class OptimConfig(_Section):
    """SPEC §0 reference recipe."""

    lr_backbone: float = 1e-7
    lr_new: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    clip_grad: float = 1.0
    warmup: float = Field(0.1, ge=0, le=1)


class TrainConfig(_Section):
    output_dir: Path = Path("runs/default")
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    """Global batch size, whatever the number of processes."""
    grad_accum: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 42
    max_steps: int | None = None
    time_budget_s: float | None = None
    """Stop training (and still evaluate) once this many seconds have passed."""
    eval_every_epoch: bool = True
    log_every: int = 10
    threads: int | None = None
    """torch intra-op threads per process (None: torch's default). Small models on a few cores
    train faster with 1 thread plus a DataLoader worker than with every core on one matmul."""
    checkpoint_every: int | None = None
    """Also write ``last/`` every this many steps (mid-epoch resume); epochs always checkpoint."""
    max_train_videos: int | None = None


class EvalConfig(_Section):
    text_block: int = Field(256, ge=1)
    """Texts tokenized and encoded per batch."""
    similarity_block: int | None = Field(None, ge=1)
    """Texts scored against all videos at once; None lets the model bound its memory. Results
    do not depend on it."""
    video_batch: int = Field(32, ge=1)
    dsl: bool = True
    dsl_temperature: float = Field(100.0, gt=0)
    """DSL softmax temperature on cosine-scale scores (logits are divided by λ first)."""
    qb_norm: bool = False
    qb_beta: float = Field(20.0, gt=0)
    """QB-Norm inverse temperature on cosine-scale scores."""
    qb_k: int = Field(1, ge=1)
    """A gallery item joins QB-Norm's activation set when it is in some bank query's top-k."""
    subsets: Path | None = None
    """JSON file {subset name: [video ids]} scored separately (e.g. the synthetic subsets.json)."""


class PretrainConfig(_Section):
    """Image–text pretraining of the CLIP towers on synthetic stills (SPEC §6, ``vtrkit pretrain``).

    The towers' shape is ``model.backbone``; optimisation is ``optim`` (all weights train at
    ``lr_backbone``) and ``train``; ``data`` names the video benchmark of the zero-shot video row.
    """

    data_seed: int = 0
    """Stills are a function of (data_seed, epoch, index); it also fixes the held-out set."""
    images_per_epoch: int = Field(25600, ge=1)
    render_size: int = Field(64, ge=16)
    """Stills are drawn at this size (the video benchmark's) and resized to the model's."""
    max_words: int = Field(40, ge=3)
    """Word slots of the pretraining captions (the longest, three objects, is about 33 tokens)."""
    max_objects: int = Field(3, ge=1, le=3)
    twins: float = Field(0.5, ge=0, le=1)
    """Share of training still pairs whose second still is the first with one attribute of one
    object changed (hard negatives; see vtrkit/data/synthetic_stills.py). 0 turns them off."""
    twin_shape: float = Field(0.25, ge=0, le=1)
    """Share of the twins that change a shape (colour, size and position share the rest)."""
    twin_pairs: int = Field(200, ge=1)
    """Twin pairs per attribute in the check of what the model tells apart."""
    heldout_pairs: int = Field(8, ge=0, le=24)
    """Colour-shape pairs held out of training at ``heldout_positions`` positions each."""
    heldout_positions: int = Field(3, ge=1, le=8)
    zero_shot_images: int = Field(500, ge=2)
    """Gallery of held-out-composition stills for zero-shot image–text retrieval."""
    probe_train: int = Field(2000, ge=10)
    probe_test: int = Field(1000, ge=10)
    zero_shot_video: bool = True
    """Also evaluate mean pooling over frames on ``data``'s test split when it exists."""


class Config(_Section):
    """One run: data, model, optimisation, training and evaluation."""

    name: str = "run"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    pretrain: PretrainConfig = PretrainConfig()
    reference: dict[str, Any] = Field(default_factory=dict)
    """Published numbers for this recipe (informational; printed beside our results)."""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see vtrkit/config.py)")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=c`` into (["a", "b"], value), the value parsed as YAML (so 3, true, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    if overrides:
        apply_overrides(data, overrides)
        source += " with overrides " + " ".join(overrides)
    return config_from_dict(data, source)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML; ``load_config`` of the result gives back an equal config."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
