"""Similarity speed and memory: the X-CLIP head and the CLIP4Clip cosine at MSR-VTT 1k-A scale.

Scores 1,000 texts against 1,000 videos (Nw 32, Nf 12, D 512, fp32, ``torch.set_num_threads(2)``)
from precomputed, L2-normalised features, as evaluation does after encoding:

- ``xclip``: :meth:`vtrkit.models.XClip.similarity`: the video side (G v, L F) computed once, texts
  streamed in blocks against all videos, score tensors laid out with the video axis innermost.
- ``xclip reference``: the released X-CLIP code's tensor expressions (the [b, Nw, V, Nf] score tensor
  with permutes, softmaxes and matmuls by the mixing matrices, ``W L`` recomputed per block), run on
  blocks of texts because the whole 1,000 × 1,000 tensor and its copies would need about 10 GB. It
  is slow, so it runs on ``--reference-texts`` texts and its time is extrapolated linearly to all
  texts (the work is linear in the number of texts); its memory is per block, so it is as measured.
- ``frame-word GEMM only``: just the one (T·Nw × D) @ (D × V·Nf) product the X-CLIP head cannot
  avoid, in the head's block size, into one reused buffer: the floor for any exact implementation.
- ``meanP / seqTransf``: :meth:`vtrkit.models.Clip4Clip.similarity` (λ · sentence · video); the
  temporal encoder runs at encoding time, so both kinds share this step.

Each method runs in a fresh subprocess. Seconds are wall time of the similarity call alone (CPU
seconds beside it: on a shared machine wall time mostly measures the neighbours);
"peak extra" is the process's peak resident memory during the call minus its resident memory just
before (the peak is reset through ``/proc/self/clear_refs``; where that is unavailable the
``ru_maxrss`` delta is used, which can only under-count). Both implementations are checked to agree
on a subset first. Run: ``PYTHONPATH=src python benchmarks/similarity.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtrkit.config import XClipConfig
from vtrkit.models.base import TextFeatures, VideoFeatures
from vtrkit.models.meanpool import Clip4Clip
from vtrkit.models.xclip import XClip
from vtrkit.models.xclip_head import XClipHead

NW, NF, D = 32, 12, 512
GOAL_SECONDS, GOAL_BYTES = 8.0, 1.5e9
REFERENCE_BLOCK = 16


class ScaleOnly(nn.Module):
    """The only part of the CLIP towers that ``similarity`` touches: the logit scale."""

    embed_dim = D

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))


def make_features(texts: int, videos: int, seed: int = 0) -> tuple[TextFeatures, VideoFeatures]:
    g = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> Tensor:
        return F.normalize(torch.randn(*shape, generator=g), dim=-1)

    lengths = torch.randint(4, NW + 1, (texts,), generator=g)
    frame_counts = torch.randint(6, NF + 1, (videos,), generator=g)
    return (
        TextFeatures(unit(texts, D), unit(texts, NW, D), torch.arange(NW) < lengths[:, None]),
        VideoFeatures(
            unit(videos, D), unit(videos, NF, D), torch.arange(NF) < frame_counts[:, None]
        ),
    )


def make_xclip(seed: int = 1) -> XClip:
    """X-CLIP head moved off its identity initialisation, as after training."""
    head = XClipHead(D, NW, NF, XClipConfig())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return XClip(ScaleOnly(), None, head)


def reference_xclip(model: XClip, text: TextFeatures, video: VideoFeatures) -> Tensor:
    """The released X-CLIP expressions, block by block over texts: [T, V] including λ."""
    h, tau = model.head, model.head.cfg.tau
    v_feat, f_feat = video.video, video.frames
    n_video = v_feat.shape[0]
    out = []
    for start in range(0, len(text), REFERENCE_BLOCK):
        s = text.sentence[start : start + REFERENCE_BLOCK]
        w = text.words[start : start + REFERENCE_BLOCK]
        b = s.shape[0]
        vs = (s @ h.global_mat) @ v_feat.T
        a = w @ v_feat.T
        vw = torch.sum(
            a
            * torch.matmul(torch.softmax(a / tau, dim=1).permute(0, 2, 1), h.word_mix).permute(
                0, 2, 1
            ),
            dim=1,
        )
        sf_scores = torch.matmul(s, f_feat.permute(0, 2, 1))
        sf = torch.sum(
            sf_scores * torch.matmul(torch.softmax(sf_scores / tau, dim=-1), h.frame_mix), dim=-1
        ).t()
        c = torch.matmul(w.reshape(-1, D) @ h.local_mat, f_feat.reshape(-1, D).t()).view(
            b, NW, n_video, NF
        )
        word_level = torch.sum(
            torch.matmul(torch.softmax(c / tau, dim=1).permute(0, 2, 3, 1), h.word_first).permute(
                0, 3, 1, 2
            )
            * c,
            dim=1,
        )
        frame_level = torch.sum(
            torch.matmul(torch.softmax(c / tau, dim=-1), h.frame_first) * c, dim=-1
        )
        del c
        s2f = torch.sum(
            torch.matmul(torch.softmax(word_level / tau, dim=-1), h.frame_second) * word_level,
            dim=-1,
        )
        v2w = torch.sum(
            torch.matmul(
                torch.softmax(frame_level / tau, dim=1).permute(0, 2, 1), h.word_second
            ).permute(0, 2, 1)
            * frame_level,
            dim=1,
        )
        out.append((vs + vw + sf + (s2f + v2w) / 2) / 4)
    return model.logit_scale.exp() * torch.cat(out)


def gemm_floor(text: TextFeatures, video: VideoFeatures, block: int = 21) -> Tensor:
    """Only the frame–word product words @ framesᵀ, block by block.

    Returns [T, V]: the best word score against each video's first frame, a cheap summary that
    keeps every block's product in use.
    """
    frames_t = video.frames.reshape(-1, D).T.contiguous()
    buffer = torch.empty(block * NW, frames_t.shape[1])
    out = []
    for start in range(0, len(text), block):
        words = text.words[start : start + block].reshape(-1, D)
        scores = torch.mm(words, frames_t, out=buffer[: words.shape[0]])
        out.append(scores.view(-1, NW, video.frames.shape[0] * NF).amax(dim=1)[:, ::NF])
    return torch.cat(out)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(method: str, texts: int, videos: int, threads: int) -> dict[str, float]:
    """Run one method in this process: wall seconds and peak extra resident bytes."""
    torch.set_num_threads(threads)
    text, video = make_features(texts, videos)
    model = make_xclip()
    meanp = Clip4Clip(ScaleOnly())
    runs = {
        "xclip": lambda: model.similarity(text, video),
        "xclip reference": lambda: reference_xclip(model, text, video),
        "frame-word GEMM only": lambda: gemm_floor(text, video),
        "meanP / seqTransf": lambda: meanp.similarity(text, video),
    }
    gc.collect()
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        exact = True
    except OSError:
        exact = False
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        start, cpu_start = time.perf_counter(), time.process_time()
        scores = runs[method]()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if exact and before is not None:
        extra_kib = (_status_kib("VmHWM") or 0) - before
    else:
        extra_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    assert scores.shape == (texts, videos) and bool(torch.isfinite(scores).all())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "extra_bytes": max(0, extra_kib) * 1024.0,
        "exact_peak": exact,
    }


def run_subprocess(method: str, texts: int, videos: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--measure", method, "--texts", str(texts)]
    cmd += ["--videos", str(videos), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_agreement(threads: int) -> float:
    torch.set_num_threads(threads)
    text, video = make_features(40, 300, seed=5)
    model = make_xclip()
    with torch.no_grad():
        return (
            (model.similarity(text, video) - reference_xclip(model, text, video)).abs().max().item()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-texts", type=int, default=100)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.texts, args.videos, args.threads)))
        return

    diff = check_agreement(args.threads)
    print(f"max |xclip - reference| on 40 x 300 (logits, λ = 100): {diff:.2e}")
    print(
        f"{args.texts} texts x {args.videos} videos, Nw {NW}, Nf {NF}, D {D}, fp32, "
        f"{args.threads} threads\n"
    )
    print(f"{'method':<20} {'seconds':>9} {'CPU s':>9} {'peak extra MB':>14}  note")
    rows = {}
    for method in ("xclip", "xclip reference", "frame-word GEMM only", "meanP / seqTransf"):
        texts = min(args.texts, args.reference_texts) if method == "xclip reference" else args.texts
        r = run_subprocess(method, texts, args.videos, args.threads)
        scale = args.texts / texts
        rows[method] = r["seconds"] * scale
        note = f"measured on {texts} texts, time x{scale:g}" if scale != 1 else ""
        if not r["exact_peak"]:
            note += " (peak from ru_maxrss)"
        cpu = r["cpu_seconds"] * scale
        print(
            f"{method:<20} {rows[method]:>9.2f} {cpu:>9.2f} {r['extra_bytes'] / 1e6:>14.0f}  {note}"
        )
        if method == "xclip":
            xclip = r
    speedup = rows["xclip reference"] / rows["xclip"]
    print(f"\nX-CLIP speed-up over the reference: {speedup:.1f}x")
    ok_time = xclip["seconds"] <= GOAL_SECONDS
    ok_mem = xclip["extra_bytes"] <= GOAL_BYTES
    print(
        f"X-CLIP goal (<= {GOAL_SECONDS:g} s, <= {GOAL_BYTES / 1e9:g} GB extra): "
        f"time {xclip['seconds'] / GOAL_SECONDS:.2f} of the goal ({'met' if ok_time else 'NOT met'}), "
        f"memory {xclip['extra_bytes'] / GOAL_BYTES:.2f} of the goal ({'met' if ok_mem else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
