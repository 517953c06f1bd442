"""Index build throughput against the bare encoder, in one run, for fp32 and bf16 (issue 14).

Generates its own videos (by default three 2-minute 640x360 25-fps H.264 files, panning textures
with a cut every 10 s), builds a random CLIP of ViT-B/32 size from its architecture (no download)
as a zero-shot meanP encoder (12 frames at 1 fps, 224 px), and for each precision prints:

- the bare frame tower's frames/s on batches of the build's size (timed before and after the
  build, averaged), and
- the build's distinct frames/s (frames encoded / build wall time, decoding included),

and their ratio. For precisions other than fp32 it also prints how close the index is to the
fp32 one: cosine of the stored pooled features window by window, and the overlap of the top-10
windows for a set of queries. ``--windows shots`` builds with shot windows instead.

``--purity`` compares the two window plans without a model: on random shot lengths (lognormal,
median 6 s, 1-60 s, exact cuts) the window that best covers each shot of 3 s or more, how much of
it lies inside the shot, how far its start is from the cut, and windows per minute.

Quick run (one short video)::

    .venv/bin/python benchmarks/index_build.py --videos 1 --seconds 20

Full run (the issue's setting; wants an otherwise idle machine)::

    .venv/bin/python benchmarks/index_build.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vtrkit.config import BackboneConfig, ClipArch, Config, DataConfig, ModelConfig
from vtrkit.index import VideoIndex
from vtrkit.index.build.incremental import build_index
from vtrkit.inference import ModelEncoder
from vtrkit.models.build import build_model

QUERIES = [
    "a person walking on a beach",
    "red car driving at night",
    "a dog catches a ball",
    "close up of a green leaf",
    "people dancing in a room",
    "a city street from above",
    "waves on the sea",
    "someone cooking pasta",
    "a cat sleeping on a sofa",
    "snow falling in a forest",
]


def write_video(path: Path, seconds: int, size: tuple[int, int], fps: int, seed: int) -> None:
    """Panning random textures, a new one (a cut) every 10 s; H.264, yuv420p."""
    width, height = size
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        texture = None
        for i in range(seconds * fps):
            if i % (10 * fps) == 0:
                coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 40, 3), np.uint8)
                texture = coarse.repeat(16, 0).repeat(16, 1)
            assert texture is not None
            x = (i % (10 * fps)) * 2
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(texture[:height, x : x + width]), format="rgb24"
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.rename(path)


def make_videos(folder: Path, count: int, seconds: int, size: tuple[int, int], fps: int) -> Path:
    tag = f"{count}x{seconds}s-{size[0]}x{size[1]}-{fps}fps"
    out = folder / tag
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"long{i}.mp4"
        if not path.exists():
            started = time.perf_counter()
            write_video(path, seconds, size, fps, seed=i)
            print(f"generated {path} in {time.perf_counter() - started:.1f} s")
    return out


def vit_b32_encoder(batch_windows: int, precision: str) -> ModelEncoder:
    """A random CLIP of ViT-B/32 shape, zero-shot meanP, 12 frames at 1 fps, 224 px."""
    torch.manual_seed(0)
    cfg = Config(
        data=DataConfig(num_frames=12, image_size=224, fps=1.0),
        model=ModelConfig(kind="meanP", temporal=False, backbone=BackboneConfig(arch=ClipArch())),
    )
    model, tokenizer = build_model(cfg.model, cfg.data)
    return ModelEncoder(model, tokenizer, cfg.data, batch_size=batch_windows, precision=precision)  # type: ignore[arg-type]


def bare_encoder_fps(encoder: ModelEncoder, batches: int) -> float:
    """Frames/s of the frame tower alone on ``batches`` batches of ``encoder.frame_batch``."""
    size = encoder.sampling.image_size
    images = torch.randn(encoder.frame_batch, 3, size, size)
    encoder.encode_frame_images(images[:2])  # warm up
    started = time.perf_counter()
    for _ in range(batches):
        encoder.encode_frame_images(images)
    return batches * encoder.frame_batch / (time.perf_counter() - started)


class time_frame_encoding:
    """Wraps ``encoder.encode_frame_images`` to add up the frames and seconds spent in it."""

    def __init__(self, encoder: ModelEncoder) -> None:
        self.original = encoder.encode_frame_images
        self.frames, self.seconds = 0, 0.0

        def timed(images: torch.Tensor) -> torch.Tensor:
            started = time.perf_counter()
            out = self.original(images)
            self.seconds += time.perf_counter() - started
            self.frames += images.shape[0]
            return out

        encoder.encode_frame_images = timed  # type: ignore[method-assign]


def agreement(reference: Path, other: Path, encoder: ModelEncoder) -> dict[str, float]:
    """Cosine of stored pooled features per window and top-10 overlap against ``reference``."""
    with VideoIndex.open(reference, encoder) as a, VideoIndex.open(other, encoder) as b:
        rows_a = a.library.catalog.windows()
        rows_b = b.library.catalog.windows()
        assert [(w.start, w.end) for w in rows_a] == [(w.start, w.end) for w in rows_b]
        pa = a.library.store.pooled(np.array([w.row for w in rows_a])).astype(np.float32)
        pb = b.library.store.pooled(np.array([w.row for w in rows_b])).astype(np.float32)
        cos = (pa * pb).sum(1) / (np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1))
        overlaps = []
        for query in QUERIES:
            top_a = {(h.video_id, h.start) for h in a.search(query, k=10, rerank=0)}
            top_b = {(h.video_id, h.start) for h in b.search(query, k=10, rerank=0)}
            overlaps.append(len(top_a & top_b) / max(1, len(top_a)))
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top10_overlap": float(np.mean(overlaps)),
    }


def window_purity(trials: int = 200, length: float = 12.0, stride: float = 6.0) -> None:
    """Fixed against shot windows on synthetic shot lists (see the module docstring)."""
    from vtrkit.index.build.shots import Shot, min_shot_length, plan_shot_windows
    from vtrkit.index.build.windows import plan_windows

    rng = np.random.default_rng(0)
    found: dict[str, list[tuple[float, float, float]]] = {"fixed": [], "shots": []}
    for _ in range(trials):
        bounds = np.concatenate(
            [[0.0], np.cumsum(np.clip(rng.lognormal(np.log(6), 0.8, 40), 1, 60))]
        )
        duration, cuts = float(bounds[-1]), bounds[:-1]
        ends = [*cuts[1:], duration]
        shots = [
            Shot(float(c), [(float(t), int(t * 1000)) for t in np.arange(c, e, 1.0)])
            for c, e in zip(cuts, ends, strict=True)
        ]
        plans = {
            "fixed": plan_windows(duration, length, stride),
            "shots": [
                (w.start, w.end)
                for w in plan_shot_windows(
                    shots, duration, length, min_shot_length(length, 1.0), 12
                )
            ],
        }
        for name, windows in plans.items():
            for c, e in zip(cuts, ends, strict=True):
                if e - c < 3:
                    continue
                best = max(windows, key=lambda w: (min(w[1], e) - max(w[0], c)) / (w[1] - w[0]))
                inside = (min(best[1], e) - max(best[0], c)) / (best[1] - best[0])
                found[name].append((inside, abs(best[0] - c), len(windows) / duration * 60))
    for name, rows in found.items():
        r = np.asarray(rows)
        print(
            json.dumps(
                {
                    "windows": name,
                    "inside_mean": round(float(r[:, 0].mean()), 3),
                    "share_90pct_inside": round(float((r[:, 0] >= 0.9).mean()), 3),
                    "start_error_median_s": round(float(np.median(r[:, 1])), 2),
                    "start_error_mean_s": round(float(r[:, 1].mean()), 2),
                    "windows_per_minute": round(float(r[:, 2].mean()), 1),
                }
            )
        )


def run(args: argparse.Namespace) -> list[dict]:
    videos = make_videos(
        Path(args.workdir), args.videos, args.seconds, (args.width, args.height), args.fps
    )
    torch.set_num_threads(args.threads)
    results, folders = [], {}
    scratch = Path(tempfile.mkdtemp(prefix="vtrkit-bench-index-"))
    try:
        for precision in args.precisions.split(","):
            encoder = vit_b32_encoder(args.batch, precision)
            before = bare_encoder_fps(encoder, args.encoder_batches)
            out = scratch / f"lib-{precision}"
            busy = time_frame_encoding(encoder)
            report = build_index(
                videos,
                out,
                encoder,
                batch_windows=args.batch,
                decode_workers=args.workers,
                windows=args.windows,
            )
            encoder.encode_frame_images = busy.original  # type: ignore[method-assign]
            after = bare_encoder_fps(encoder, args.encoder_batches)
            bare = (before + after) / 2
            build = report.frames / report.seconds
            row = {
                "precision": precision,
                "windows": args.windows,
                "frame_batch": encoder.frame_batch,
                "bare_encoder_fps": round(bare, 2),
                "bare_before_after": [round(before, 2), round(after, 2)],
                "build_distinct_fps": round(build, 2),
                "ratio": round(build / bare, 3),
                # Robust to other load on the machine: how much of the build the encoder was
                # computing, and its speed while the decoders ran beside it.
                "encoder_busy_fraction": round(busy.seconds / report.seconds, 3),
                "encoder_fps_in_build": round(busy.frames / max(busy.seconds, 1e-9), 2),
                "frames": report.frames,
                "windows_indexed": report.windows,
                "build_s": round(report.seconds, 2),
            }
            folders[precision] = out
            if precision != "fp32" and "fp32" in folders:
                row.update(agreement(folders["fp32"], out, encoder))
            print(json.dumps(row))
            results.append(row)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--windows", default="fixed", choices=["fixed", "shots"])
    parser.add_argument("--batch", type=int, default=4, help="windows per pass (x 12 frames)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--encoder-batches", type=int, default=3)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "vtrkit-bench"))
    parser.add_argument("--purity", action="store_true", help="compare window plans, no model")
    args = parser.parse_args()
    if args.purity:
        window_purity()
        return
    run(args)


if __name__ == "__main__":
    main()
