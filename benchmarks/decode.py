"""Frame sampling speed: vtrkit's seeking sampler against decoding every frame.

Writes 10-s 320x240 30-fps H.264 clips to a temporary folder (one with a keyframe every second,
one with x264's default keyframe interval of 250 frames) and times, in ms per video, the SPEC §0
sample (12 frames at 1 fps, 224x224):

- ``sampler (seek)``: :func:`vtrkit.data.decode.read_sampled_frames`, the library path;
- ``sampler (linear)``: the same call with ``seek=False`` (decodes every frame, converts only the
  chosen ones; the library's fallback path);
- ``decode all``: the naive reader: decode every frame to an RGB array, then pick and resize.
- ``load_frames``: the full model input (sampler + normalise + pad), for reference.

Everything runs on one core: ``torch.set_num_threads(1)`` and FFmpeg decoder ``thread_count = 1``
(PyAV's default is slice threading with an automatic thread count; the library pins it to one, see
``vtrkit.data.decode.DECODER_THREADS``). Run: ``PYTHONPATH=src python benchmarks/decode.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import torch

from vtrkit.data.decode import load_frames, read_sampled_frames
from vtrkit.data.sampling import FrameSampling, sample_frame_indices
from vtrkit.data.transforms import resize_and_crop

SECONDS, FPS, WIDTH, HEIGHT = 10, 30, 320, 240
SAMPLING = FrameSampling(num_frames=12, fps=1.0, image_size=224)


def write_clip(path: Path, keyint: int | None) -> Path:
    """A moving, textured test clip (so the encoder does real work), H.264 in MP4."""
    rng = np.random.default_rng(0)
    # A smooth random landscape (pure noise would make every frame unrealistically costly).
    coarse = torch.from_numpy(rng.random((1, 3, HEIGHT // 16, (WIDTH + SECONDS * FPS * 2) // 16)))
    texture = torch.nn.functional.interpolate(
        coarse * 255, size=(HEIGHT, WIDTH + SECONDS * FPS * 2), mode="bicubic"
    )
    texture = texture.clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        options = {"preset": "medium", "crf": "23"}
        if keyint is not None:
            options.update({"g": str(keyint), "keyint_min": str(keyint), "sc_threshold": "0"})
        stream.codec_context.options = options
        ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
        for i in range(SECONDS * FPS):
            image = texture[:, 2 * i : 2 * i + WIDTH].copy()
            # A bright disc moving across the panning texture.
            cx, cy = (i * 3) % WIDTH, HEIGHT // 2
            image[(xs - cx) ** 2 + (ys - cy) ** 2 < 30**2] = (250, 200, 40)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def decode_everything(path: Path) -> torch.Tensor:
    """The naive baseline: every frame to RGB, then the SPEC §0 pick and resize."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        base = float(stream.time_base)
        images, times = [], []
        for frame in container.decode(stream):
            images.append(frame.to_ndarray(format="rgb24"))
            times.append(frame.pts * base)
    chosen = sample_frame_indices(times, SAMPLING.num_frames, SAMPLING.fps)
    picked = torch.from_numpy(np.stack([images[i] for i in chosen]))
    return resize_and_crop(picked, SAMPLING.image_size)


def time_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (CPU, wall) milliseconds per call. CPU time of this single-threaded process is the
    figure to compare on a shared machine; wall time includes waiting for a core."""
    fn()  # warm-up: file cache, codec initialisation
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start_wall) * 1000)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        clips = {
            "keyframe every 1 s": write_clip(Path(tmp) / "gop30.mp4", 30),
            "x264 default (250)": write_clip(Path(tmp) / "gop250.mp4", None),
        }
        methods: dict[str, Callable[[Path], object]] = {
            "sampler (seek)": lambda p: read_sampled_frames(p, SAMPLING),
            "sampler (linear)": lambda p: read_sampled_frames(p, SAMPLING, seek=False),
            "decode all": decode_everything,
            "load_frames": lambda p: load_frames(p, SAMPLING),
        }
        for path in clips.values():
            sampled = read_sampled_frames(path, SAMPLING)[0]
            assert torch.equal(sampled, decode_everything(path)), "sampler and baseline disagree"
        table = {
            method: {clip: time_ms(partial(fn, path), args.repeats) for clip, path in clips.items()}
            for method, fn in methods.items()
        }
    width = 24
    n, fps, size = SAMPLING.num_frames, SAMPLING.fps, SAMPLING.image_size
    print(
        f"{SECONDS}-s {WIDTH}x{HEIGHT} {FPS}-fps H.264 -> {n} frames at {fps:g} fps, "
        f"{size}x{size}, 1 thread; median ms per video, CPU (wall)"
    )
    header = f"{'method':<22}" + "".join(f"{clip:>{width}}" for clip in clips)
    print(header)
    print("-" * len(header))
    for method, row in table.items():
        cells = "".join(f"{f'{row[c][0]:.1f} ({row[c][1]:.1f})':>{width}}" for c in clips)
        print(f"{method:<22}" + cells)
    print("-" * len(header))
    for baseline in ("decode all", "sampler (linear)"):
        seek = table["sampler (seek)"]
        ratios = "".join(f"{f'{table[baseline][c][0] / seek[c][0]:.1f}x':>{width}}" for c in clips)
        print(f"{baseline + ' / seek':<22}" + ratios)


if __name__ == "__main__":
    main()
