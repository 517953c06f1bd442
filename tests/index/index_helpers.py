"""Test helpers for the index: a deterministic fake encoder and generated colour videos.

The fake encoder's features are a readable function of the pixels, so a search has a known answer:
a frame's feature is the centred mean colour of its four quadrants (D = 12); a text's feature is the
same vector for the colour words it names. "red" therefore finds the red video with cosine 1.
Its re-ranking head scores a window by its *best* frame (max over real frames), which differs from
the pooled (mean) score whenever a window changes colour, so re-ranking can be checked.
"""

from __future__ import annotations

import hashlib
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from vtrkit.config import BackboneConfig, ClipArch, Config, DataConfig, ModelConfig
from vtrkit.data.sampling import FrameSampling
from vtrkit.data.transforms import CLIP_MEAN, CLIP_STD
from vtrkit.models.base import TextFeatures, VideoFeatures

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "orange": (255, 128, 0),
}
DIM = 12
NUM_WORDS = 6


def colour_vector(rgb: tuple[int, int, int]) -> Tensor:
    """Centred colour repeated over the four quadrants, unit norm: [12]."""
    centred = torch.tensor(rgb, dtype=torch.float32) / 255.0 - 0.5
    return F.normalize(centred.repeat(4), dim=0)


class FakeEncoder:
    """Deterministic :class:`vtrkit.inference.Encoder` for tests (see module docstring)."""

    def __init__(
        self,
        sampling: FrameSampling = FrameSampling(num_frames=4, fps=1.0, image_size=32),
        salt: str = "",
        delay: float = 0.0,
    ) -> None:
        self.sampling = sampling
        self.salt = salt
        self.delay = delay
        self.video_calls = 0
        self.windows_encoded = 0

    def frame_features(self, frames: Tensor) -> Tensor:
        """[N, Nf, 3, S, S] normalised -> [N, Nf, 12] unit-norm quadrant colours."""
        mean = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
        pixels = frames * std + mean - 0.5
        s = frames.shape[-1] // 2
        quads = [
            pixels[..., :s, :s],
            pixels[..., :s, s:],
            pixels[..., s:, :s],
            pixels[..., s:, s:],
        ]
        feats = torch.cat([q.mean(dim=(-1, -2)) for q in quads], dim=-1)
        return F.normalize(feats, dim=-1)

    def encode_video_windows(self, frames: Tensor, mask: Tensor) -> VideoFeatures:
        if self.delay:
            time.sleep(self.delay)
        self.video_calls += 1
        self.windows_encoded += frames.shape[0]
        per_frame = self.frame_features(frames)
        weights = mask.float().unsqueeze(-1)
        pooled = F.normalize((per_frame * weights).sum(1) / weights.sum(1), dim=-1)
        return VideoFeatures(pooled, per_frame, mask.clone())

    def encode_texts(self, texts: list[str]) -> TextFeatures:
        sentences, words, masks = [], [], []
        for text in texts:
            vecs = [colour_vector(COLOURS[w]) for w in text.lower().split() if w in COLOURS]
            if not vecs:
                seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")
                vecs = [torch.randn(DIM, generator=torch.Generator().manual_seed(seed))]
            sentence = F.normalize(torch.stack(vecs).mean(0), dim=0)
            w = torch.zeros(NUM_WORDS, DIM)
            m = torch.zeros(NUM_WORDS, dtype=torch.bool)
            for i, v in enumerate(vecs[:NUM_WORDS]):
                w[i], m[i] = F.normalize(v, dim=0), True
            sentences.append(sentence)
            words.append(w)
            masks.append(m)
        return TextFeatures(torch.stack(sentences), torch.stack(words), torch.stack(masks))

    def rerank_scores(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """Best real frame: max_f cos(sentence, frame_f) -> [T, K]."""
        sims = torch.einsum("td,kfd->tkf", text.sentence, video.frames)
        sims = sims.masked_fill(~video.mask.unsqueeze(0), float("-inf"))
        return sims.max(dim=-1).values

    def fingerprint(self) -> str:
        s = self.sampling
        key = f"fake|{s.num_frames}|{s.image_size}|{s.fps}|{self.salt}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]


def write_video(
    path: Path,
    colours: list[tuple[int, int, int]],
    fps: int = 4,
    size: tuple[int, int] = (40, 32),
) -> Path:
    """An h264 mp4 showing ``colours[i]`` during second i (width × height = ``size``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for second, rgb in enumerate(colours):
            image = np.empty((height, width, 3), np.uint8)
            image[:] = rgb
            for i in range(fps):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = second * fps + i
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_collection(folder: Path, seconds: int = 4) -> dict[str, Path]:
    """One solid-colour video per colour name, plus a truncated mp4 and a text file named .mp4.

    Returns {colour or "truncated"/"text": path}.
    """
    out: dict[str, Path] = {}
    for name, rgb in COLOURS.items():
        out[name] = write_video(folder / f"{name}.mp4", [rgb] * seconds)
    good = (folder / "red.mp4").read_bytes()
    out["truncated"] = folder / "broken" / "truncated.mp4"
    out["truncated"].parent.mkdir(exist_ok=True)
    out["truncated"].write_bytes(good[: len(good) // 2])
    out["text"] = folder / "broken" / "notes.mp4"
    out["text"].write_text("this is not a video, just text with an .mp4 name\n")
    return out


def tiny_config() -> Config:
    """A tiny random X-CLIP (D=16, 3 frames of 16 px) that builds in well under a second."""
    arch = ClipArch(
        embed_dim=16,
        image_size=16,
        patch_size=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        text_width=16,
        text_layers=1,
        text_heads=2,
    )
    return Config(
        data=DataConfig(num_frames=3, max_words=8, image_size=16, fps=1.0),
        model=ModelConfig(
            kind="xclip", temporal_layers=1, temporal_heads=2, backbone=BackboneConfig(arch=arch)
        ),
    )
