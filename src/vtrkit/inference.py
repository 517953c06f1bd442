"""What the index needs from a model, and the adapter over vtrkit's retrieval models.

The index talks to an :class:`Encoder`: it encodes windows of videos once at build time, encodes
query texts, and re-scores a handful of candidates with the model's own head. Its
:meth:`Encoder.fingerprint` is stored in the catalog so an index is never searched with features
from a different model.

Shapes: N windows, Nf frame slots, S image size, T texts, K candidates, D embedding width.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from vtrkit.config import Config, DataConfig
from vtrkit.data.sampling import FrameSampling
from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures

log = logging.getLogger(__name__)


@runtime_checkable
class Encoder(Protocol):
    """A text/video encoder as the index uses it."""

    sampling: FrameSampling
    """How windows are sampled: ``num_frames`` (Nf frame slots per window), ``fps`` (frames per
    second of video before thinning to Nf) and ``image_size`` (S: frames are square S×S)."""

    def encode_video_windows(self, frames: Tensor, mask: Tensor) -> VideoFeatures:
        """frames [N, Nf, 3, S, S] normalised float, mask [N, Nf] bool -> features of N windows."""
        ...

    def encode_texts(self, texts: list[str]) -> TextFeatures:
        """T texts -> sentence [T, D] (unit-norm), words and mask."""
        ...

    def rerank_scores(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """The model's own score of every pair: [T, K] float (higher is better)."""
        ...

    def fingerprint(self) -> str:
        """Hex digest identifying the model's configuration and weights."""
        ...


@runtime_checkable
class FrameEncoder(Encoder, Protocol):
    """An :class:`Encoder` that encodes sampled frames once and builds windows from their
    features: the index build's fast path, where overlapping windows share their frames."""

    encodes_frames: bool
    """False when this model cannot split its video encoding (the build then encodes windows)."""

    def encode_frame_images(self, images: Tensor) -> Tensor:
        """images [N, 3, S, S] normalised float -> frame features [N, D] float32 on the CPU."""
        ...

    def windows_from_frame_features(self, features: Tensor, mask: Tensor) -> VideoFeatures:
        """features [W, Nf, D] (padded slots: the feature of an all-zero image), mask [W, Nf]
        -> what :meth:`Encoder.encode_video_windows` gives for the same frames."""
        ...


Precision = Literal["fp32", "bf16", "int8", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8", "auto")


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``bf16`` on a GPU with bf16 and on a CPU with native bf16 instructions
    (AVX512-BF16 or AMX), where the index-build benchmark measured 2-3x the fp32 frame rate with
    stored features at cosine 0.99999 to fp32's; ``fp32`` elsewhere (emulated bf16 is slower than
    fp32). Other values are returned as they are."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu":
        return "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def _splits_video_encoding(model: RetrievalModel) -> bool:
    """True when ``encode_video`` is ``encode_images`` followed by ``video_from_frame_features``:
    both split methods come from the class that defines ``encode_video`` or a subclass of it (a
    model that overrides ``encode_video`` alone is encoded window by window)."""

    def owner(name: str) -> type:
        return next(k for k in type(model).__mro__ if name in vars(k))

    split, images = owner("video_from_frame_features"), owner("encode_images")
    if RetrievalModel in (split, images):
        return False
    return issubclass(split, owner("encode_video")) and issubclass(images, owner("encode_video"))


def _reduced_copy(model: RetrievalModel, precision: str) -> torch.nn.Module:
    """A copy of ``model`` for encoding frames in ``precision`` (bf16 weights, or int8 dynamic
    quantization of its Linear layers); the original keeps fp32 for everything else."""
    copy = deepcopy(model)
    if precision == "bf16":
        return copy.to(torch.bfloat16)
    with warnings.catch_warnings():
        # torch marks its eager quantization API deprecated; it still works on the CPU.
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.cpu(), {torch.nn.Linear}, dtype=torch.qint8)


def _hash_tensor(h: Any, name: str, tensor: Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    # Hashing the raw bytes (viewed as uint8) works for every dtype, bf16 included.
    h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_model(model: torch.nn.Module, settings: dict[str, Any]) -> str:
    """sha256 over the model class, the input ``settings`` and every tensor of its state dict."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        _hash_tensor(h, name, tensor)
    return h.hexdigest()[:32]


class ModelEncoder:
    """:class:`Encoder` over a :class:`RetrievalModel` and its tokenizer.

    Args:
        model: the retrieval model (put in eval mode; weights are not changed).
        tokenizer: its tokenizer (``tok(texts, max_words) -> (ids [T, Nw], mask [T, Nw])``).
        data_cfg: the data section the model was built with (Nf, Nw, S, fps).
        device: where to run the model.
        batch_size: windows per forward pass when encoding videos.
        source: how to load this model again (recorded in an index's catalog), e.g.
            ``{"kind": "checkpoint", "path": ...}``; None for a model built in code.
        precision: arithmetic of the frame tower when encoding videos: ``fp32``, ``bf16``
            (bf16 weights and activations), ``int8`` (dynamic quantization of the Linear
            layers, CPU only) or ``auto`` (:func:`resolve_precision`). Texts, the temporal encoder and the heads stay fp32, and the
            fingerprint is the fp32 model's, so an index built in one precision is searched
            with any.
    """

    def __init__(
        self,
        model: RetrievalModel,
        tokenizer: Any,
        data_cfg: DataConfig,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        source: dict[str, Any] | None = None,
        precision: Precision = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(
                f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (--precision)"
            )
        precision = resolve_precision(precision, device)  # type: ignore[assignment]
        if precision == "int8" and torch.device(device).type != "cpu":
            raise ValueError("precision int8 (dynamic quantization) runs on the CPU only")
        self.model = model.eval().to(device)
        self.source = source or {"kind": "custom"}
        self.tokenizer = tokenizer
        self.data_cfg = data_cfg
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.sampling = data_cfg.sampling
        self._fingerprint: str | None = None
        self.precision = precision
        self.encodes_frames = _splits_video_encoding(self.model)
        if precision != "fp32":
            self.fingerprint()  # of the fp32 weights
        self._reduced: torch.nn.Module | None = None

    @property
    def _frame_model(self) -> torch.nn.Module:
        """The model the frame tower runs in: the fp32 model, or its reduced-precision copy
        (made on first use, so loading an index for text search costs no copy)."""
        if self.precision == "fp32":
            return self.model
        if self._reduced is None:
            self._reduced = _reduced_copy(self.model, self.precision).eval()
        return self._reduced

    @property
    def frame_batch(self) -> int:
        """Frames per forward pass of the frame tower: ``batch_size`` windows of Nf frames."""
        return self.batch_size * self.sampling.num_frames

    @torch.no_grad()
    def encode_frame_images(self, images: Tensor) -> Tensor:
        """images [N, 3, S, S] normalised -> CLIP frame features [N, D] float32 on the CPU."""
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        parts = [
            self._frame_model.encode_images(
                images[start : start + self.frame_batch].to(self.device, dtype)
            )
            .float()
            .cpu()
            for start in range(0, images.shape[0], self.frame_batch)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, 0)

    @torch.no_grad()
    def windows_from_frame_features(self, features: Tensor, mask: Tensor) -> VideoFeatures:
        """features [W, Nf, D] from :meth:`encode_frame_images`, mask [W, Nf] -> VideoFeatures on
        the CPU (float32), equal to :meth:`encode_video_windows` on the same frames."""
        parts = []
        for start in range(0, features.shape[0], self.batch_size):
            out = self.model.video_from_frame_features(
                features[start : start + self.batch_size].to(self.device),
                mask[start : start + self.batch_size].to(self.device),
            )
            parts.append(
                VideoFeatures(out.video.float().cpu(), out.frames.float().cpu(), out.mask.cpu())
            )
        return VideoFeatures.cat(parts)

    @torch.no_grad()
    def encode_video_windows(self, frames: Tensor, mask: Tensor) -> VideoFeatures:
        """frames [N, Nf, 3, S, S], mask [N, Nf] -> VideoFeatures on the CPU (float32); frames
        go through the frame tower in :attr:`precision`."""
        if self.precision != "fp32" and self.encodes_frames:
            n, nf = frames.shape[:2]
            clip = self.encode_frame_images(frames.flatten(0, 1)).view(n, nf, -1)
            return self.windows_from_frame_features(clip, mask)
        parts = []
        for start in range(0, frames.shape[0], self.batch_size):
            out = self.model.encode_video(
                frames[start : start + self.batch_size].to(self.device),
                mask[start : start + self.batch_size].to(self.device),
            )
            parts.append(
                VideoFeatures(out.video.float().cpu(), out.frames.float().cpu(), out.mask.cpu())
            )
        return VideoFeatures.cat(parts)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> TextFeatures:
        """T texts -> TextFeatures on the CPU (float32)."""
        ids, mask = self.tokenizer(list(texts), self.data_cfg.max_words)
        out = self.model.encode_text(ids.to(self.device), mask.to(self.device))
        return TextFeatures(out.sentence.float().cpu(), out.words.float().cpu(), out.mask.cpu())

    @torch.no_grad()
    def rerank_scores(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """[T, K]: ``model.similarity`` (X-CLIP's multi-grained logits, cosine·λ for CLIP4Clip);
        for CLIP2TV with its matching head, ``vta/λ + w_rr · p_match`` as in SPEC §2."""
        text, video = text.to(self.device), video.to(self.device)
        return self.model.rerank_scores(text, video).float().cpu()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            # The same keys and values as before FrameSampling, so fingerprints are unchanged.
            settings = {**asdict(self.sampling), "max_words": self.data_cfg.max_words}
            self._fingerprint = fingerprint_model(self.model, settings)
        return self._fingerprint


def load_model_for_index(
    checkpoint_dir: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    precision: Precision = "fp32",
) -> ModelEncoder:
    """A trained model from a checkpoint or run folder (see :func:`vtrkit.checkpoint.load_trained`)."""
    from vtrkit.checkpoint import load_trained

    trained = load_trained(checkpoint_dir, device)
    if trained.config.model.kind == "videoclip":
        raise ValueError(
            f"{trained.folder}: a VideoCLIP model scores stored per-second features, not frames; "
            "it cannot encode video windows for an index"
        )
    source = {"kind": "checkpoint", "path": str(trained.folder.resolve())}
    return ModelEncoder(
        trained.model,  # type: ignore[arg-type]
        trained.tokenizer,
        trained.config.data,
        device,
        batch_size,
        source,
        precision,
    )


def zero_shot_config(backbone: str | Path, sampling: FrameSampling = FrameSampling()) -> Config:
    """Config of a zero-shot CLIP4Clip (mean pooling, no temporal encoder) on a CLIP checkpoint,
    its data section sampling frames as ``sampling`` says."""
    cfg = Config()
    cfg.model.kind = "meanP"
    cfg.model.temporal = False
    cfg.model.backbone.checkpoint = Path(backbone)
    cfg.data.num_frames = sampling.num_frames
    cfg.data.image_size = sampling.image_size
    cfg.data.fps = sampling.fps
    return cfg


def load_backbone_for_index(
    backbone: str | Path,
    sampling: FrameSampling = FrameSampling(),
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    precision: Precision = "fp32",
) -> ModelEncoder:
    """Zero-shot encoder: the CLIP backbone ``backbone`` with mean pooling over frames.

    ``backbone`` is a local checkpoint (OpenAI .pt, open_clip state dict, Hugging Face folder, or
    an official X-CLIP/CLIP4Clip file, whose ``clip.*`` towers are used), or a Hub id / OpenAI
    name resolved through the local Hugging Face cache (:mod:`vtrkit.backbones.hub`).
    ``sampling`` is recorded in the encoder's ``source`` (keys ``num_frames``, ``fps``,
    ``image_size``, as index catalogs store them).
    """
    from vtrkit.backbones.hub import resolve_backbone
    from vtrkit.models.build import build_model

    path = resolve_backbone(backbone)  # raises FileNotFoundError naming what to give or fetch
    cfg = zero_shot_config(path, sampling)
    model, tokenizer = build_model(cfg.model, cfg.data)
    source = {
        "kind": "backbone",
        "path": str(path.resolve()),
        "name": str(backbone),
        **asdict(sampling),
    }
    return ModelEncoder(model, tokenizer, cfg.data, device, batch_size, source, precision)


def encoder_from_source(
    source: dict[str, Any], device: str | torch.device = "cpu", batch_size: int = 16
) -> ModelEncoder:
    """Rebuild the encoder an index was built with, from the ``source`` record in its catalog."""
    kind = source.get("kind")
    if kind == "checkpoint":
        return load_model_for_index(source["path"], device=device, batch_size=batch_size)
    if kind == "backbone":
        return load_backbone_for_index(
            source["path"], FrameSampling.from_dict(source), device=device, batch_size=batch_size
        )
    raise ValueError(
        f"the index was built with a custom encoder ({source!r}); pass the same encoder to "
        "VideoIndex.open(path, encoder=...)"
    )
