"""Readers on datasets laid out as downloaded: DiDeMo's official and re-encoded layouts with the
published split lists, videos anywhere under the video folder, and errors that say why a file
was rejected."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest

from vtrkit.data.datasets import (
    AnnotationError,
    read_activitynet,
    read_didemo,
    read_msrvtt,
    read_msvd,
)
from vtrkit.data.datasets import video_folder as video_folder_module

# The extensions DiDeMo ids carry (the Flickr originals), a bare "." and an upper-case one.
ODD = (".mov", ".mp4", ".mpg", ".3gp", ".wmv", ".3g2", ".mts", ".m2ts", ".avi", ".", ".MOV", ".m4v")
SECOND = {".mov": ".mp4", ".mp4": ".mov"}  # the extra id: the same video, another extension
PUBLISHED = {"test": (1004, 1037), "val": (1065, 1094)}


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_didemo(root: Path, split: str) -> tuple[list[str], list[str]]:
    """Annotations with the published counts: (listed ids, extra ids). Ids cycle through the odd
    extensions; every extra is a listed video under a second extension, placed in the JSON right
    after its listed id. The first listed id has two moments."""
    listed_count, json_count = PUBLISHED[split]
    listed = [
        f"{1000 + i}@N0{i % 7}_{i}_{i * 7919 % 9973:04x}{ODD[i % len(ODD)]}"
        for i in range(listed_count)
    ]
    doubled = [v for v in listed if Path(v).suffix in SECOND][: json_count - listed_count]
    extras = [v[: -len(Path(v).suffix)] + SECOND[Path(v).suffix] for v in doubled]
    entries = []
    for i, video in enumerate(listed):
        entries.append({"video": video, "description": f"moment {i}", "times": [[0, 1]]})
        if video in doubled:
            extra = extras[doubled.index(video)]
            entries.append({"video": extra, "description": f"other {i}", "times": [[1, 1]]})
    entries.append({"video": listed[0], "description": "then more", "times": [[2, 3], [2, 2]]})
    (root / f"{split}_data.json").write_text(json.dumps(entries))
    (root / f"{split}_list.txt").write_text("\n".join(listed) + "\n")
    assert len(extras) == json_count - listed_count
    return listed, extras


@pytest.mark.parametrize("split", ["test", "val"])
def test_official_layout_with_split_lists_gives_the_published_counts(tmp_path, split, caplog):
    listed, extras = write_didemo(tmp_path, split)
    # Named exactly by the id, spread over sub-folders; half the extras exist as files too.
    for i, video in enumerate(listed):
        touch(tmp_path / "videos" / f"part{i % 3}" / ("deep" if i % 2 else "") / video)
    for video in extras[::2]:
        touch(tmp_path / "videos" / "part9" / video)
    with caplog.at_level(logging.WARNING):
        records = read_didemo(tmp_path, split)
    assert len(records) == PUBLISHED[split][0]
    assert [r.video_id for r in records] == listed
    assert all(r.path.name == r.video_id for r in records)
    assert len({r.path for r in records}) == len(records)
    assert records[0].captions == ["moment 0 then more"]
    assert [(s.start, s.end) for s in records[0].segments] == [(0.0, 10.0), (10.0, 17.5)]
    assert f"{len(extras)} ids beyond the {len(listed)}" in caplog.text
    assert f"{len(extras)} of them are a listed video under another extension" in caplog.text


def test_reencoded_layout_with_and_without_split_lists(tmp_path, caplog):
    listed, extras = write_didemo(tmp_path, "test")
    for video in listed:  # re-encoded: the extension replaced by .mp4 ("X." -> "X.mp4")
        stem = video[:-1] if video.endswith(".") else video[: -len(Path(video).suffix)]
        touch(tmp_path / "videos" / f"{stem}.mp4")
    records = read_didemo(tmp_path, "test")
    assert len(records) == 1004
    trailing = next(r for r in records if r.video_id.endswith("."))
    assert trailing.path.name == trailing.video_id[:-1] + ".mp4"
    odd = next(r for r in records if r.video_id.endswith(".m2ts"))
    assert odd.path.name == odd.video_id[: -len(".m2ts")] + ".mp4"

    (tmp_path / "test_list.txt").unlink()  # without the lists: one entry per video still
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        unlisted = read_didemo(tmp_path, "test")
    assert len(unlisted) == 1004 and len({r.path for r in unlisted}) == 1004
    assert {r.video_id for r in unlisted} == set(listed)  # the first id of each video is kept
    assert f"{len(extras)} ids repeat a video under another extension" in caplog.text


def test_two_ids_finding_one_file_make_one_gallery_entry(tmp_path, caplog):
    entries = [
        {"video": "a1.mov", "description": "a cat", "times": [[0, 0]]},
        {"video": "a1.mov.mp4", "description": "a dog", "times": [[0, 0]]},
    ]
    (tmp_path / "test_data.json").write_text(json.dumps(entries))
    touch(tmp_path / "videos" / "a1.mov.mp4")  # "a1.mov" + ".mp4", and "a1.mov.mp4" exactly
    with caplog.at_level(logging.WARNING):
        records = read_didemo(tmp_path, "test")
    assert [(r.video_id, r.captions) for r in records] == [("a1.mov", ["a cat"])]
    assert "a1.mov.mp4 (same file as a1.mov)" in caplog.text


def test_rejected_files_are_named_with_the_reason(tmp_path):
    entries = [{"video": "7@N00_1_ab.mpg", "description": "a boat", "times": [[0, 1]]}]
    (tmp_path / "test_data.json").write_text(json.dumps(entries))
    touch(tmp_path / "videos" / "clips" / "7@N00_1_ab.mpg.part")
    touch(tmp_path / "videos" / "7@N00_1_ab.json")
    with pytest.raises(AnnotationError) as err:
        read_didemo(tmp_path, "test")
    message = str(err.value)
    assert "holds 2 files" in message
    assert (
        "clips/7@N00_1_ab.mpg.part" in message
        and "'.mpg.part' after '7@N00_1_ab' is not a video extension" in message
    )
    assert "7@N00_1_ab.mpg, 7@N00_1_ab.mpg.mp4" in message  # what was tried
    with pytest.raises(AnnotationError, match="does not exist"):
        read_didemo(tmp_path, "test", video_dir=tmp_path / "nowhere")


def test_every_reader_finds_videos_anywhere_with_one_walk(tmp_path, monkeypatch):
    walks = []
    real_walk = os.walk

    def counting_walk(top, *args, **kwargs):
        walks.append(Path(top))
        return real_walk(top, *args, **kwargs)

    monkeypatch.setattr(video_folder_module.os, "walk", counting_walk)
    # MSR-VTT unpacked as TrainValVideo/ and TestVideo/.
    msrvtt = tmp_path / "msrvtt"
    msrvtt.mkdir()
    sentences = [{"video_id": f"video{i}", "caption": f"caption {i}"} for i in range(6)]
    (msrvtt / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    (msrvtt / "MSRVTT_train.9k.csv").write_text(
        "video_id\n" + "\n".join(f"video{i}" for i in range(5))
    )
    for i in range(5):
        touch(msrvtt / "videos" / "TrainValVideo" / f"video{i}.mp4")
    train = read_msrvtt(msrvtt, "train")
    assert [r.path.parent.name for r in train] == ["TrainValVideo"] * 5
    assert walks == [msrvtt / "videos"]
    # MSVD in YouTubeClips/, ActivityNet split by year.
    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "raw-captions.pkl").write_bytes(
        pickle.dumps({"vid_a": [["a", "cat"]], "vid_b": [["b"]]})
    )
    (msvd / "test_list.txt").write_text("vid_a\nvid_b\n")
    touch(msvd / "videos" / "YouTubeClips" / "vid_a.avi")
    touch(msvd / "videos" / "YouTubeClips" / "more" / "vid_b.avi")
    assert [r.path.name for r in read_msvd(msvd, "test")] == ["vid_a.avi", "vid_b.avi"]
    anet = tmp_path / "anet"
    anet.mkdir()
    item = {"duration": 9.0, "timestamps": [[0, 4]], "sentences": ["someone waves"]}
    (anet / "val_1.json").write_text(json.dumps({"v_q1": item, "v_q2": item}))
    touch(anet / "videos" / "v1-3" / "val" / "v_q1.mkv")
    touch(anet / "videos" / "v1-2" / "q2.mp4")  # saved without the prefix
    found = read_activitynet(anet, "val")
    assert [r.path.name for r in found] == ["v_q1.mkv", "q2.mp4"]
    assert len(walks) == 3  # one walk per reader call, not one search per record
