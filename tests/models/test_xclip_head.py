"""X-CLIP head vs a loop-by-loop transcription of SPEC §1, block-size independence, switches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vtrkit.config import XClipConfig
from vtrkit.models.xclip_head import (
    XClipHead,
    XClipParams,
    aggregate,
    prepare_video,
    split_aggregation,
    xclip_scores,
)

T, V, NW, NF, D = 3, 4, 5, 4, 6
WORD_LENGTHS = [5, 3, 2]
FRAME_LENGTHS = [4, 2, 1, 3]


def ref_agg(xs: list[float], mix: list[list[float]], kind: str, tau: float, real: list[bool]):
    """SPEC's agg(x; M) = Σ_k x_k (softmax(x/τ)·M)_k, or mean / max, over the real positions."""
    idx = [k for k in range(len(xs)) if real[k]]
    if kind == "max":
        return max(xs[k] for k in idx)
    if kind == "mean":
        return sum(xs[k] for k in idx) / len(idx)
    top = max(xs[k] / tau for k in idx)
    exps = {k: math.exp(xs[k] / tau - top) for k in idx}
    z = sum(exps.values())
    soft = [exps.get(k, 0.0) / z for k in range(len(xs))]
    total = 0.0
    for k in idx:
        mixed = 0.0
        for j in range(len(xs)):
            mixed += soft[j] * mix[j][k]
        total += xs[k] * mixed
    return total


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def bilinear(a: list[float], m: list[list[float]], b: list[float]) -> float:
    """aᵀ M b with explicit loops."""
    total = 0.0
    for d in range(len(a)):
        for e in range(len(b)):
            total += a[d] * m[d][e] * b[e]
    return total


def reference_scores(s, w, wmask, v, f, fmask, p: XClipParams, cfg: XClipConfig):
    """Direct transcription of SPEC §1 with loops over i, j, w, f (python floats)."""
    first, second = split_aggregation(cfg.aggregation)
    tau = cfg.tau
    s, w, v, f = s.tolist(), w.tolist(), v.tolist(), f.tolist()
    m = {name: getattr(p, name).tolist() for name in p.__dataclass_fields__}
    out = torch.zeros(len(s), len(v), dtype=torch.float64)
    for i in range(len(s)):
        word_real = [bool(x) or not cfg.mask_padding for x in wmask[i]]
        for j in range(len(v)):
            frame_real = [bool(x) or not cfg.mask_padding for x in fmask[j]]
            terms = []
            if cfg.video_sentence:
                terms.append(bilinear(s[i], m["global_mat"], v[j]))
            if cfg.video_word:
                a = [dot(w[i][k], v[j]) for k in range(NW)]
                terms.append(ref_agg(a, m["word_mix"], first, tau, word_real))
            if cfg.sentence_frame:
                b = [dot(s[i], f[j][q]) for q in range(NF)]
                terms.append(ref_agg(b, m["frame_mix"], first, tau, frame_real))
            if cfg.frame_word:
                c = [
                    [bilinear(w[i][k], m["local_mat"], f[j][q]) for q in range(NF)]
                    for k in range(NW)
                ]
                u = [
                    ref_agg([c[k][q] for k in range(NW)], m["word_first"], first, tau, word_real)
                    for q in range(NF)
                ]
                r = [
                    ref_agg([c[k][q] for q in range(NF)], m["frame_first"], first, tau, frame_real)
                    for k in range(NW)
                ]
                terms.append(
                    (
                        ref_agg(u, m["frame_second"], second, tau, frame_real)
                        + ref_agg(r, m["word_second"], second, tau, word_real)
                    )
                    / 2
                )
            out[i, j] = sum(terms) / len(terms)
    return out


def lengths_mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def random_inputs(seed: int = 0, t: int = T, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)

    def near_identity(n):
        return torch.eye(n, dtype=dtype) + 0.4 * torch.randn(n, n, generator=g, dtype=dtype)

    params = XClipParams(
        global_mat=near_identity(D),
        local_mat=near_identity(D),
        word_mix=near_identity(NW),
        word_first=near_identity(NW),
        word_second=near_identity(NW),
        frame_mix=near_identity(NF),
        frame_first=near_identity(NF),
        frame_second=near_identity(NF),
    )
    word_lengths = (WORD_LENGTHS * t)[:t]
    return (
        unit(t, D),
        unit(t, NW, D),
        lengths_mask(word_lengths, NW),
        unit(V, D),
        unit(V, NF, D),
        lengths_mask(FRAME_LENGTHS, NF),
        params,
    )


@pytest.mark.parametrize("tau", [0.01, 0.3])
@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize(
    "aggregation", ["attention", "mean-mean", "mean-max", "max-mean", "max-max"]
)
def test_head_matches_loop_reference(aggregation: str, mask_padding: bool, tau: float) -> None:
    s, w, wm, v, f, fm, p = random_inputs(seed=1)
    cfg = XClipConfig(aggregation=aggregation, mask_padding=mask_padding, tau=tau)
    got = xclip_scores(s, w, wm, prepare_video(v, f, fm, p), p, cfg, text_block=2)
    want = reference_scores(s, w, wm, v, f, fm, p, cfg)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    "enabled",
    [
        ("video_sentence",),
        ("video_word",),
        ("sentence_frame",),
        ("frame_word",),
        ("video_sentence", "frame_word"),
        ("video_word", "sentence_frame", "frame_word"),
    ],
)
def test_contrast_switches_average_the_enabled_terms(enabled: tuple[str, ...]) -> None:
    s, w, wm, v, f, fm, p = random_inputs(seed=2)
    names = ("video_sentence", "video_word", "sentence_frame", "frame_word")
    cfg = XClipConfig(**{n: n in enabled for n in names}, mask_padding=True, tau=0.2)
    got = xclip_scores(s, w, wm, prepare_video(v, f, fm, p), p, cfg)
    torch.testing.assert_close(got, reference_scores(s, w, wm, v, f, fm, p, cfg))


def test_masking_ignores_padded_content_only_when_on() -> None:
    s, w, wm, v, f, fm, p = random_inputs(seed=3)
    w2, f2 = w.clone(), f.clone()
    w2[~wm] = F.normalize(torch.randn_like(w2[~wm]), dim=-1)
    f2[~fm] = F.normalize(torch.randn_like(f2[~fm]), dim=-1)
    for mask_padding, same in [(True, True), (False, False)]:
        cfg = XClipConfig(mask_padding=mask_padding, tau=0.1)
        a = xclip_scores(s, w, wm, prepare_video(v, f, fm, p), p, cfg)
        b = xclip_scores(s, w2, wm, prepare_video(v, f2, fm, p), p, cfg)
        assert torch.allclose(a, b) == same


@pytest.mark.parametrize("aggregation", ["attention", "max-mean"])
def test_result_does_not_depend_on_block_size(aggregation: str) -> None:
    s, w, wm, v, f, fm, p = random_inputs(seed=4, t=7, dtype=torch.float32)
    cfg = XClipConfig(aggregation=aggregation, mask_padding=True)
    vid = prepare_video(v, f, fm, p)
    full = xclip_scores(s, w, wm, vid, p, cfg, text_block=7)
    for block in (1, 2, 3, 5, None):
        torch.testing.assert_close(
            xclip_scores(s, w, wm, vid, p, cfg, text_block=block), full, atol=1e-6, rtol=0
        )


def test_head_module_starts_at_identity_and_gets_gradients() -> None:
    s, w, wm, v, f, fm, _ = random_inputs(seed=5, dtype=torch.float32)
    head = XClipHead(D, NW, NF, XClipConfig())
    for name, param in head.named_parameters():
        assert torch.equal(param, torch.eye(param.shape[0])), name
    scores = head(s, w, wm, head.prepare(v, f, fm))
    scores.logsumexp(dim=1).sum().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # With identity matrices the video–sentence term is the plain cosine.
    only_vs = XClipHead(
        D, NW, NF, XClipConfig(video_word=False, sentence_frame=False, frame_word=False)
    )
    torch.testing.assert_close(only_vs(s, w, wm, only_vs.prepare(v, f, fm)), s @ v.T)


def test_configuration_errors_name_the_option() -> None:
    s, w, wm, v, f, fm, p = random_inputs(seed=6)
    off = XClipConfig(
        video_sentence=False, video_word=False, sentence_frame=False, frame_word=False
    )
    with pytest.raises(ValueError, match="video_sentence"):
        xclip_scores(s, w, wm, prepare_video(v, f, fm, p), p, off)
    with pytest.raises(ValueError, match="max_words"):
        xclip_scores(s, w[:, :3], wm[:, :3], prepare_video(v, f, fm, p), p, XClipConfig())
    with pytest.raises(ValueError, match="aggregation"):
        split_aggregation("mean-attention")


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reduction", ["attention", "mean", "max"])
def test_aggregate_matches_reference_along_any_axis(reduction: str, masked: bool) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mix = torch.eye(5, dtype=torch.float64) + 0.5 * torch.randn(
        5, 5, generator=g, dtype=torch.float64
    )
    real = torch.rand(3, 5, 1, generator=g) > 0.3
    real[:, 0] = True
    mask = real if masked else None
    got = aggregate(x, mix, 1, reduction, 0.2, mask)  # type: ignore[arg-type]
    for i in range(3):
        for k in range(4):
            flags = [bool(real[i, j, 0]) or not masked for j in range(5)]
            want = ref_agg(x[i, :, k].tolist(), mix.tolist(), reduction, 0.2, flags)
            assert got[i, k].item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    last = aggregate(
        x.transpose(1, 2), mix, -1, reduction, 0.2, None if mask is None else mask.transpose(1, 2)
    )  # type: ignore[arg-type]
    torch.testing.assert_close(last, got)


def _with_grad(p: XClipParams) -> XClipParams:
    return XClipParams(*(m.clone().requires_grad_(True) for m in vars(p).values()))


@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize("aggregation", ["attention", "mean-max", "max-mean"])
def test_training_path_equals_buffered_inference_path(aggregation: str, mask_padding: bool) -> None:
    # Under autograd the head uses out-of-place ops; without it, reusable scratch buffers. Both
    # must give the reference numbers, and the training path must carry gradients.
    s, w, wm, v, f, fm, p = random_inputs(seed=8)
    cfg = XClipConfig(aggregation=aggregation, mask_padding=mask_padding, tau=0.05)
    want = reference_scores(s, w, wm, v, f, fm, p, cfg)
    with torch.no_grad():
        inference = xclip_scores(s, w, wm, prepare_video(v, f, fm, p), p, cfg, text_block=2)
    trainable = _with_grad(p)
    words = w.clone().requires_grad_(True)
    training = xclip_scores(
        s, words, wm, prepare_video(v, f, fm, trainable), trainable, cfg, text_block=2
    )
    assert training.requires_grad
    torch.testing.assert_close(inference, want, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(training.detach(), want, atol=1e-10, rtol=1e-8)
    training.square().sum().backward()
    assert words.grad is not None and torch.isfinite(words.grad).all()
    assert words.grad.abs().sum() > 0


def test_gradients_match_finite_differences() -> None:
    s, w, wm, v, f, fm, p = random_inputs(seed=9)
    cfg = XClipConfig(mask_padding=True, tau=0.3)

    def scores(words: torch.Tensor, word_first: torch.Tensor, frame_first: torch.Tensor):
        q = XClipParams(**{**vars(p), "word_first": word_first, "frame_first": frame_first})
        return xclip_scores(s, words, wm, prepare_video(v, f, fm, q), q, cfg, text_block=2)

    inputs = tuple(x.clone().requires_grad_(True) for x in (w, p.word_first, p.frame_first))
    assert torch.autograd.gradcheck(scores, inputs, eps=1e-6, atol=1e-6)
