"""A tiny narrated corpus with stored per-second features, shared by the VideoCLIP tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vtrkit.config import Config, config_from_dict
from vtrkit.data.records import Segment, VideoRecord
from vtrkit.videoclip.features import save_features, write_index

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
D_IN = 16


def tiny_videoclip_config(
    out: Path, features: Path, videoclip: dict | None = None, train: dict | None = None
) -> Config:
    """A tiny VideoCLIP run on the corpus below; ``videoclip`` / ``train`` override keys."""
    vc = {
        "features": str(features),
        "d_in": D_IN,
        "hidden": 32,
        "heads": 4,
        "text_layers": 2,
        "video_layers": 2,
        "cluster_k": 4,
        "pairs_per_video": 4,
        "max_video_tokens": 16,
        "loc_window": 16,
        "loc_stride": 8,
        # Captions here are 3 tokens: short text clips keep text and video of similar extent.
        "text_clip_tokens": (3, 9),
        **(videoclip or {}),
    }
    return config_from_dict(
        {
            "model": {"kind": "videoclip", "videoclip": vc},
            "optim": {"lr_new": 3e-3, "weight_decay": 0.0, "warmup": 0.1},
            # One group of cluster_k videos per optimiser step, as VideoCLIP trains.
            "train": {
                "output_dir": str(out),
                "log_every": 1,
                "seed": 3,
                "batch_size": vc["cluster_k"],
                **(train or {}),
            },
        }
    )


def make_corpus(root: Path, n_videos: int, seed: int = 0, seconds: int = 40) -> list[VideoRecord]:
    """Videos whose seconds inside a segment carry the one-hot code of the segment's word.

    Captions are "the <word> step"; background seconds hold noise only.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries, records = {}, []
    for v in range(n_videos):
        feats = rng.normal(scale=0.3, size=(seconds, D_IN)).astype(np.float32)
        segments, t = [], int(rng.integers(0, 3))
        while t + 3 < seconds:
            length = int(rng.integers(3, 7))
            end = min(seconds, t + length)
            word = int(rng.integers(len(WORDS)))
            feats[t:end, word] += 3.0
            segments.append(Segment(float(t), float(end), f"the {WORDS[word]} step"))
            t = end + int(rng.integers(1, 3))
        vid = f"vid{v:03d}"
        entries[vid] = save_features(root, vid, feats)
        records.append(
            VideoRecord(
                vid, Path(f"{vid}.mp4"), [s.text for s in segments], "train", segments=segments
            )
        )
    write_index(root, entries)
    return records


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[VideoRecord]]:
    root = tmp_path / "features"
    return root, make_corpus(root, 12)
