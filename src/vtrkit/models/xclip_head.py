"""X-CLIP multi-grained similarity (SPEC §1): pure functions plus the learned head.

Shapes: T texts, V videos, Nw word slots, Nf frame slots, D width. All features arrive
L2-normalised; the scores returned here are *without* λ (the model multiplies by λ).

Definitions (the released code's behaviour is the default):

- ``agg(x; M) = Σ_k x_k · (softmax(x/τ) · M)_k`` along one axis: the softmax weights are
  re-mixed by the learned matrix M *after* the softmax (a row vector times M).
- Aggregation kinds name two reductions, ``first-second``: ``first`` reduces the first pass of the
  frame–word term (over words per frame, and over frames per word) *and* the single-pass
  video–word and sentence–frame terms; ``second`` reduces the second pass of the frame–word term.
  ``attention`` uses ``agg`` in both places; ``mean``/``max`` are the plain mean/max along the
  axis (the mixing matrix is then unused).
- ``mask_padding`` (off by default, like the released code): padded words/frames get -inf before
  each softmax *and* are left out of the weighted sum (their re-mixed weight is zeroed, so a learned
  non-identity M cannot move weight back onto padding); ``mean`` averages real positions only and
  ``max`` takes the maximum over real positions only. Each text needs a real word and each video a
  real frame.
- Contrasts can be switched off; the logit is the *mean over the enabled contrasts* (the SPEC's
  ``/4`` when all four are on).

The frame–word term touches T×Nw×V×Nf numbers, so :func:`xclip_scores` precomputes the video
side once (``G v`` and ``L F``) and streams blocks of texts against all videos; every block is
computed independently, so the result does not depend on the block size. Inside a block the score
tensors keep the video axis innermost ([b, Nw, Nf, V]) so softmaxes and mixing GEMMs run over a
middle axis with long contiguous rows, and the text side is divided by τ up front (every reduction
is positively homogeneous, so the block result is τ times the τ = 1 result), which saves a pass
over each large tensor. Without autograd, the block-sized intermediates live in three scratch
buffers allocated once per call, so peak memory is fixed by the block size. The one large GEMM
(T·Nw × D × V·Nf multiply-adds) is the cost floor: about 60% of the time at MSR-VTT 1k-A scale
(``benchmarks/similarity.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vtrkit.config import XClipConfig

Reduction = Literal["attention", "mean", "max"]

_ELEMENT_BUDGET = 1 << 23
"""Default cap on block × V × Nw × Nf elements per frame–word tensor (32 MiB in fp32)."""


def split_aggregation(kind: str) -> tuple[Reduction, Reduction]:
    """Split an aggregation kind into its (first pass, second pass) reductions.

    ``attention`` gives (attention, attention); ``mean-max`` gives (mean, max).
    """
    if kind == "attention":
        return "attention", "attention"
    parts = kind.split("-")
    if len(parts) != 2 or any(p not in ("mean", "max") for p in parts):
        raise ValueError(
            f"unknown X-CLIP aggregation {kind!r} (model.xclip.aggregation); use attention, "
            "mean-mean, mean-max, max-mean or max-max"
        )
    return parts[0], parts[1]  # type: ignore[return-value]


def aggregate(
    x: Tensor,
    mix: Tensor,
    dim: int,
    reduction: Reduction,
    tau: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Reduce scores ``x`` along ``dim``.

    Args:
        x: scores of any shape; the reduced axis has length N.
        mix: [N, N] mixing matrix M, used by ``attention`` only.
        dim: axis to reduce.
        reduction: ``attention`` (Σ x ⊙ (softmax(x/τ)·M)), ``mean`` or ``max``.
        tau: softmax temperature τ.
        mask: None (no masking) or bool broadcastable to ``x``, True at real positions.

    Returns:
        ``x`` with ``dim`` removed.
    """
    if reduction != "attention":
        return _reduce(x, mix, dim, reduction, mask)
    # Every reduction is positively homogeneous: agg_τ(x) = τ · agg_1(x / τ).
    return tau * _reduce(x * (1.0 / tau), mix, dim, reduction, mask)


def _reduce(
    z: Tensor,
    mix: Tensor,
    dim: int,
    reduction: Reduction,
    mask: Tensor | None,
    work: _Workspace | None = None,
) -> Tensor:
    """:func:`aggregate` with τ = 1 (scores already divided by τ).

    ``work`` given: the full-size intermediates go into its reusable buffers (inference; no
    autograd graph may be recorded). None: plain out-of-place ops, as autograd needs.
    """
    if work is not None:
        return _reduce_buffered(z, mix, dim, reduction, mask, work)
    if reduction == "max":
        if mask is not None:
            z = z.masked_fill(~mask, float("-inf"))
        return z.amax(dim=dim)
    if reduction == "mean":
        if mask is None:
            return z.mean(dim=dim)
        return (z * mask).sum(dim=dim) / mask.sum(dim=dim)
    logits = z if mask is None else z.masked_fill(~mask, float("-inf"))
    weights = _mix_along(torch.softmax(logits, dim=dim), mix, dim)
    if mask is not None:
        weights = weights * mask
    return (weights * z).sum(dim=dim)


def _reduce_buffered(
    z: Tensor, mix: Tensor, dim: int, reduction: Reduction, mask: Tensor | None, work: _Workspace
) -> Tensor:
    """:func:`_reduce` writing every full-size intermediate into ``work`` (same numbers)."""
    a, b = work.pair(z.shape)
    if mask is not None:
        neg_inf = z.new_full((), float("-inf"))
    if reduction == "max":
        if mask is None:
            return z.amax(dim=dim)
        return torch.where(mask, z, neg_inf, out=a).amax(dim=dim)
    if reduction == "mean":
        if mask is None:
            return z.mean(dim=dim)
        return torch.mul(z, mask, out=a).sum(dim=dim) / mask.sum(dim=dim)
    if mask is None:
        weights = torch.softmax(z, dim, out=a)
        mixed = _mix_along(weights, mix, dim, out=b)
    else:
        weights = torch.softmax(torch.where(mask, z, neg_inf, out=b), dim, out=a)
        mixed = _mix_along(weights, mix, dim, out=b).mul_(mask)
    return mixed.mul_(z).sum(dim=dim)


def _mix_along(weights: Tensor, mix: Tensor, dim: int, out: Tensor | None = None) -> Tensor:
    """Re-mix softmax weights along ``dim`` by M: (w · M) for every position, same shape as w."""
    dim = dim % weights.dim()
    if dim == weights.dim() - 1:
        return torch.matmul(weights, mix, out=out)
    # A middle axis as one batched GEMM, Mᵀ [N, N] @ [P, N, I], through bmm with an expanded
    # (stride-0) Mᵀ: ``mix.T @ x`` would let matmul fold the product into a single mm through
    # two transposed copies of the large operand, which cost more than the GEMM itself.
    n, inner = weights.shape[dim], math.prod(weights.shape[dim + 1 :])
    stacked = weights.reshape(-1, n, inner)
    lhs = mix.T.expand(stacked.shape[0], n, n)
    if out is None:
        return torch.bmm(lhs, stacked).view(weights.shape)
    torch.bmm(lhs, stacked, out=out.view(stacked.shape))
    return out


class _Workspace:
    """Reusable scratch buffers for one call of :func:`xclip_scores` without autograd.

    Streaming T/b blocks would otherwise allocate (and page-fault in) several block-sized
    tensors per block; with three buffers allocated once, peak memory is fixed by the block size
    and the allocator cannot fragment it (measured: peak extra memory varied 0.3–1.2 GB between
    identical runs before).
    """

    def __init__(self, numel: int, like: Tensor) -> None:
        self._numel, self._like = numel, like
        self._buffers: list[Tensor] = []

    def _buffer(self, i: int) -> Tensor:
        # Allocated on first use: with the frame–word contrast off the third is never needed.
        while len(self._buffers) <= i:
            self._buffers.append(self._like.new_empty(self._numel))
        return self._buffers[i]

    def pair(self, shape: torch.Size | tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Two scratch tensors of ``shape`` (views of the first two buffers)."""
        n = math.prod(shape)
        return self._buffer(0)[:n].view(shape), self._buffer(1)[:n].view(shape)

    def scores(self, shape: tuple[int, ...]) -> Tensor:
        """A third tensor of ``shape`` that holds the frame–word scores while pair() is in use."""
        return self._buffer(2)[: math.prod(shape)].view(shape)


@dataclass
class XClipParams:
    """The learned matrices of the head (all identity at initialisation).

    global_mat G, local_mat L: [D, D]; word_mix A_w, word_first P_w, word_second Q_w: [Nw, Nw];
    frame_mix A_f, frame_first P_f, frame_second Q_f: [Nf, Nf].
    """

    global_mat: Tensor
    local_mat: Tensor
    word_mix: Tensor
    word_first: Tensor
    word_second: Tensor
    frame_mix: Tensor
    frame_first: Tensor
    frame_second: Tensor


@dataclass
class PreparedVideo:
    """Video side of the head, computed once per video set, laid out slot-major so that every
    score tensor has the video axis innermost (reductions over words or frames then run over a
    middle axis with V contiguous elements, which is much faster than reducing a short last axis).

    video: [V, D]; global_video = G v: [V, D]; frames: [Nf, V, D]; local_frames_t = (L F)ᵀ:
    [D, Nf·V], stored transposed and contiguous because it is the right-hand operand of the one
    large GEMM (measured ~7% faster than multiplying by a transposed view); mask: [Nf, V] bool
    (True at real frames).
    """

    video: Tensor
    global_video: Tensor
    frames: Tensor
    local_frames_t: Tensor
    mask: Tensor

    @property
    def num_videos(self) -> int:
        return self.video.shape[0]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


def prepare_video(
    video: Tensor, frames: Tensor, mask: Tensor, params: XClipParams
) -> PreparedVideo:
    """Apply G and L to the video side once.

    Args:
        video: [V, D]; frames: [V, Nf, D]; mask: [V, Nf] bool; params: the learned matrices.
    """
    by_slot = frames.transpose(0, 1).contiguous()
    return PreparedVideo(
        video=video,
        global_video=video @ params.global_mat.T,
        frames=by_slot,
        local_frames_t=(params.local_mat @ by_slot.reshape(-1, by_slot.shape[-1]).T).contiguous(),
        mask=mask.T,
    )


def _block_scores(
    sentence: Tensor,
    words: Tensor,
    word_mask: Tensor | None,
    vid: PreparedVideo,
    frame_mask: Tensor | None,
    params: XClipParams,
    cfg: XClipConfig,
    work: _Workspace | None,
) -> Tensor:
    """Mean of the enabled contrasts for one block of b texts against all V videos: [b, V].

    word_mask: [b, Nw] or None; frame_mask: [Nf, V] or None (None = no masking); work: scratch
    buffers of at least b·Nw·Nf·V elements, or None when autograd records a graph.
    """
    first, second = split_aggregation(cfg.aggregation)
    # Work on scores divided by τ (every reduction is homogeneous, so the result is τ times the
    # τ = 1 result): dividing the small text side saves a pass over each large score tensor.
    inv_tau = 1.0 / cfg.tau
    sentence = sentence * inv_tau
    words = words * inv_tau
    b, nw, d = words.shape
    nf, v = vid.num_frames, vid.num_videos
    wm3 = None if word_mask is None else word_mask[:, :, None]  # for [b, Nw, V]
    fm3 = None if frame_mask is None else frame_mask[None]  # for [b, Nf, V]
    terms: list[Tensor] = []
    if cfg.video_sentence:
        terms.append(sentence @ vid.global_video.T)
    if cfg.video_word:
        a = words @ vid.video.T  # [b, Nw, V]
        terms.append(_reduce(a, params.word_mix, 1, first, wm3, work))
    if cfg.sentence_frame:
        sf = (sentence @ vid.frames.reshape(nf * v, d).T).view(b, nf, v)
        terms.append(_reduce(sf, params.frame_mix, 1, first, fm3, work))
    if cfg.frame_word:
        flat = words.reshape(b * nw, d)
        if work is None:
            c = (flat @ vid.local_frames_t).view(b, nw, nf, v)
        else:
            c = work.scores((b, nw, nf, v))
            torch.mm(flat, vid.local_frames_t, out=c.view(b * nw, nf * v))
        wm4 = None if word_mask is None else word_mask[:, :, None, None]
        fm4 = None if frame_mask is None else frame_mask[None, None]
        per_frame = _reduce(c, params.word_first, 1, first, wm4, work)  # [b, Nf, V]
        per_word = _reduce(c, params.frame_first, 2, first, fm4, work)  # [b, Nw, V]
        del c
        over_frames = _reduce(per_frame, params.frame_second, 1, second, fm3, work)
        over_words = _reduce(per_word, params.word_second, 1, second, wm3, work)
        terms.append((over_frames + over_words) / 2)
    if not terms:
        raise ValueError(
            "all four X-CLIP contrasts are off; enable at least one of model.xclip.video_sentence, "
            "video_word, sentence_frame, frame_word"
        )
    return torch.stack(terms).mean(dim=0) * cfg.tau


def xclip_scores(
    sentence: Tensor,
    words: Tensor,
    word_mask: Tensor,
    vid: PreparedVideo,
    params: XClipParams,
    cfg: XClipConfig,
    text_block: int | None = None,
) -> Tensor:
    """X-CLIP similarity of every text against every video, without λ.

    Args:
        sentence: [T, D] sentence features.
        words: [T, Nw, D] word features.
        word_mask: [T, Nw] bool, True at real tokens (used only when ``cfg.mask_padding``).
        vid: video side from :func:`prepare_video` (V videos, Nf frames).
        params: learned matrices.
        cfg: contrasts, aggregation, τ and masking switches.
        text_block: texts per block; None picks one so that a frame–word tensor [b, Nw, Nf, V]
            stays within 8M elements (32 MiB in fp32; three such scratch buffers are
            allocated once per call). The result does not depend on it.

    Returns:
        [T, V] scores: the mean of the enabled contrasts.
    """
    t, nw = words.shape[:2]
    v, nf = vid.num_videos, vid.num_frames
    if params.word_first.shape[0] != nw or params.frame_first.shape[0] != nf:
        raise ValueError(
            f"X-CLIP head was built for Nw={params.word_first.shape[0]}, "
            f"Nf={params.frame_first.shape[0]} but got Nw={nw}, Nf={nf}; data.max_words and "
            "data.num_frames must match the values the model was built with"
        )
    if text_block is None:
        text_block = max(1, _ELEMENT_BUDGET // max(1, nw * v * nf))
    tensors = (sentence, words, vid.global_video, vid.frames, vid.local_frames_t, vid.video)
    tensors += tuple(vars(params).values())
    records_graph = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    work = None
    if not records_graph:
        # The largest block tensor: frame–word scores [b, Nw, Nf, V], else [b, max(Nw, Nf), V].
        per_text = nw * nf * v if cfg.frame_word else max(nw, nf) * v
        block_numel = min(t, text_block) * per_text
        work = _Workspace(block_numel, words)
    word_mask_used = word_mask if cfg.mask_padding else None
    frame_mask_used = vid.mask if cfg.mask_padding else None
    blocks = []
    for start in range(0, t, text_block):
        stop = min(t, start + text_block)
        blocks.append(
            _block_scores(
                sentence[start:stop],
                words[start:stop],
                None if word_mask_used is None else word_mask_used[start:stop],
                vid,
                frame_mask_used,
                params,
                cfg,
                work,
            )
        )
    return torch.cat(blocks) if blocks else sentence.new_zeros(0, v)


class XClipHead(nn.Module):
    """Learned matrices of the X-CLIP head, all initialised to the identity.

    Args:
        width: D.
        num_words: Nw (data.max_words).
        num_frames: Nf (data.num_frames).
        cfg: switches (model.xclip).
    """

    def __init__(self, width: int, num_words: int, num_frames: int, cfg: XClipConfig) -> None:
        super().__init__()
        split_aggregation(cfg.aggregation)
        self.cfg = cfg
        self.global_mat = nn.Parameter(torch.eye(width))
        self.local_mat = nn.Parameter(torch.eye(width))
        self.word_mix = nn.Parameter(torch.eye(num_words))
        self.word_first = nn.Parameter(torch.eye(num_words))
        self.word_second = nn.Parameter(torch.eye(num_words))
        self.frame_mix = nn.Parameter(torch.eye(num_frames))
        self.frame_first = nn.Parameter(torch.eye(num_frames))
        self.frame_second = nn.Parameter(torch.eye(num_frames))

    def params(self) -> XClipParams:
        return XClipParams(
            self.global_mat,
            self.local_mat,
            self.word_mix,
            self.word_first,
            self.word_second,
            self.frame_mix,
            self.frame_first,
            self.frame_second,
        )

    def prepare(self, video: Tensor, frames: Tensor, mask: Tensor) -> PreparedVideo:
        """video [V, D], frames [V, Nf, D], mask [V, Nf] -> the video side, computed once."""
        return prepare_video(video, frames, mask, self.params())

    def forward(
        self,
        sentence: Tensor,
        words: Tensor,
        word_mask: Tensor,
        vid: PreparedVideo,
        text_block: int | None = None,
    ) -> Tensor:
        """Scores [T, V] without λ; see :func:`xclip_scores`."""
        return xclip_scores(sentence, words, word_mask, vid, self.params(), self.cfg, text_block)
