"""A tiny narrated corpus with stored per-second features, shared by the VideoCLIP tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vtrkit.data.records import Segment, VideoRecord
from vtrkit.videoclip.features import save_features, write_index

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
D_IN = 16


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
