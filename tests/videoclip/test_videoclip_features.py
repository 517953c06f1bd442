"""The per-second feature format: extraction, failures, resuming, sharding and merging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vtrkit.videoclip.features import (
    INDEX_FILE,
    extract_features,
    feature_file_name,
    load_features,
    merge_shard_indexes,
    read_index,
    videos_in_folder,
)


def _fake_videos(folder: Path, n: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"v{i:02d}.mp4").write_bytes(b"x" * (i + 1))
    (folder / "notes.txt").write_text("not a video")
    return videos_in_folder(folder, [".mp4"])


class CountingExtractor:
    """Seconds = file size + 2, values = video number; ``v03`` is undecodable."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: Path) -> np.ndarray:
        self.calls.append(path.stem)
        if path.stem == "v03":
            raise RuntimeError("moov atom not found")
        n = path.stat().st_size + 2
        return np.full((n, 4), int(path.stem[1:]) + 0.25, dtype=np.float32)


def test_extraction_writes_the_documented_format_and_records_failures(tmp_path: Path):
    videos = _fake_videos(tmp_path / "videos", 5)
    assert sorted(videos) == ["v00", "v01", "v02", "v03", "v04"]
    out = tmp_path / "feats"
    summary = extract_features(videos, out, CountingExtractor())
    assert (summary.extracted, summary.failed, summary.skipped) == (4, 1, 0)
    raw = json.loads((out / INDEX_FILE).read_text())
    assert raw["v02"] == {"file": "v02.npy", "seconds": 5, "dim": 4, "status": "ok", "error": None}
    assert raw["v03"]["status"] == "failed" and "moov atom" in raw["v03"]["error"]
    arr = np.load(out / "v02.npy")
    assert arr.dtype == np.float16 and arr.shape == (5, 4) and float(arr[0, 0]) == 2.25
    assert np.array_equal(load_features(out, "v04"), np.full((7, 4), 4.25, dtype=np.float16))
    with pytest.raises(KeyError, match="v03"):
        load_features(out, "v03")
    # Logs are folded into index.json; no temporary files remain.
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json",
        "v00.npy",
        "v01.npy",
        "v02.npy",
        "v04.npy",
    ]


def test_rerun_resumes_and_retries_failures_only_when_asked(tmp_path: Path):
    videos = _fake_videos(tmp_path / "videos", 5)
    out = tmp_path / "feats"
    extract_features(videos, out, CountingExtractor())
    (out / "v01.npy").unlink()  # an array lost after it was indexed is redone
    again = CountingExtractor()
    summary = extract_features(videos, out, again)
    assert again.calls == ["v01"] and summary.skipped == 4
    retry = CountingExtractor()
    extract_features(videos, out, retry, retry_failed=True)
    assert retry.calls == ["v03"]


def test_killed_run_resumes_from_its_log(tmp_path: Path):
    videos = _fake_videos(tmp_path / "videos", 4)
    out = tmp_path / "feats"
    extract_features({k: videos[k] for k in ["v00", "v01"]}, out, CountingExtractor(), merge=False)
    # A process killed mid-write leaves a torn line and no index.json.
    with (out / "index.rank0.jsonl").open("a") as f:
        f.write('{"video_id": "v02", "fi')
    assert not (out / INDEX_FILE).exists()
    rest = CountingExtractor()
    extract_features(videos, out, rest)
    assert rest.calls == ["v02", "v03"]
    assert sorted(read_index(out)) == ["v00", "v01", "v02", "v03"]


def test_shards_split_the_work_and_merge_into_one_index(tmp_path: Path):
    videos = _fake_videos(tmp_path / "videos", 7)
    out = tmp_path / "feats"
    calls = []
    for rank in range(3):
        ex = CountingExtractor()
        extract_features(videos, out, ex, rank=rank, world_size=3, merge=False)
        calls.append(ex.calls)
    assert sorted(c for part in calls for c in part) == sorted(videos)  # each video once
    assert calls[1] == ["v01", "v04"]
    assert len(list(out.glob("index.rank*.jsonl"))) == 3
    entries = merge_shard_indexes(out)
    assert sorted(entries) == sorted(videos)
    assert not list(out.glob("index.rank*.jsonl"))
    assert read_index(out)["v05"].seconds == 8


def test_index_and_array_disagreement_is_reported(tmp_path: Path):
    videos = _fake_videos(tmp_path / "videos", 1)
    out = tmp_path / "feats"
    extract_features(videos, out, CountingExtractor())
    np.save(out / "v00.npy", np.zeros((9, 4), np.float16))
    with pytest.raises(ValueError, match="does not match the index"):
        load_features(out, "v00")


def test_unsafe_ids_get_distinct_safe_file_names():
    a, b = feature_file_name("cook/clip 1"), feature_file_name("cook/clip_1")
    assert a != b and "/" not in a and a.endswith(".npy")
    assert feature_file_name("abc-1.2") == "abc-1.2.npy"


def test_duplicate_stems_are_an_error(tmp_path: Path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="same"):
        videos_in_folder(tmp_path, [".mp4"])
