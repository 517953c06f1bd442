"""Dataset readers on small fixture files written in each published format."""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import pytest

from vtrkit.config import DataConfig
from vtrkit.data.datasets import (
    AnnotationError,
    expand_segments,
    read_activitynet,
    read_custom,
    read_dataset,
    read_didemo,
    read_lsmdc,
    read_msrvtt,
    read_msvd,
    read_youcook2,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------- MSR-VTT


def write_msrvtt(root: Path) -> None:
    data = {
        "videos": [{"video_id": f"video{i}"} for i in range(4)],
        "sentences": [
            {"video_id": "video0", "caption": "a man sings", "sen_id": 0},
            {"video_id": "video0", "caption": "someone is singing", "sen_id": 1},
            {"video_id": "video1", "caption": "a dog runs", "sen_id": 2},
            {"video_id": "video2", "caption": "ignored for test", "sen_id": 3},
            {"video_id": "video3", "caption": "cars race", "sen_id": 4},
        ],
    }
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        ",key,vid_key,video_id,sentence\n"
        "0,ret0,msr2,video2,a woman cooks pasta\n"
        "1,ret1,msr3,video3,two cars race on a track\n"
    )
    touch(root / "videos" / "video0.mp4")
    touch(root / "videos" / "video1.webm")
    touch(root / "videos" / "video2.mp4")
    touch(root / "videos" / "video3.avi")


def test_msrvtt_train_expands_all_captions_and_test_uses_csv_sentence(tmp_path: Path) -> None:
    write_msrvtt(tmp_path)
    train = read_msrvtt(tmp_path, "train")
    assert [r.video_id for r in train] == ["video0", "video1"]
    assert train[0].captions == ["a man sings", "someone is singing"]
    assert train[1].path == tmp_path / "videos" / "video1.webm"
    assert {r.split for r in train} == {"train"}
    test = read_msrvtt(tmp_path, "test")
    assert [(r.video_id, r.captions) for r in test] == [
        ("video2", ["a woman cooks pasta"]),
        ("video3", ["two cars race on a track"]),
    ]
    assert test[1].path.name == "video3.avi"
    assert all(r.window is None for r in test)


def test_msrvtt_missing_file_is_named(tmp_path: Path) -> None:
    write_msrvtt(tmp_path)
    (tmp_path / "MSRVTT_JSFUSION_test.csv").unlink()
    with pytest.raises(AnnotationError, match=re.escape("MSRVTT_JSFUSION_test.csv")):
        read_msrvtt(tmp_path, "test")
    with pytest.raises(AnnotationError, match="no split 'val'"):
        read_msrvtt(tmp_path, "val")


def test_msrvtt_bad_row_skipped_with_file_and_line(tmp_path: Path, caplog) -> None:
    write_msrvtt(tmp_path)
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr2,video2,a woman cooks\nret1,msr3,,\n"
    )
    with caplog.at_level(logging.WARNING):
        test = read_msrvtt(tmp_path, "test")
    assert [r.video_id for r in test] == ["video2"]
    assert "MSRVTT_JSFUSION_test.csv, line 3" in caplog.text


def test_msrvtt_missing_videos_dropped_or_rejected(tmp_path: Path, caplog) -> None:
    write_msrvtt(tmp_path)
    (tmp_path / "videos" / "video1.webm").unlink()
    with caplog.at_level(logging.WARNING):
        train = read_msrvtt(tmp_path, "train")
    assert [r.video_id for r in train] == ["video0"]
    assert "1 of 2 videos" in caplog.text and "video1" in caplog.text
    with pytest.raises(AnnotationError, match=re.escape("set data.video_dir")):
        read_msrvtt(tmp_path, "train", video_dir=tmp_path / "elsewhere")


def test_unreadable_json_rejected_with_position(tmp_path: Path) -> None:
    write_msrvtt(tmp_path)
    (tmp_path / "MSRVTT_data.json").write_text('{"sentences": [\n  {"video_id": }')
    with pytest.raises(AnnotationError, match=r"MSRVTT_data.json:2:\d+: not valid JSON"):
        read_msrvtt(tmp_path, "train")


# --------------------------------------------------------------------------- MSVD


def test_msvd_joins_tokens_and_reads_split_lists(tmp_path: Path) -> None:
    captions = {
        "abc_1_5": [["a", "cat", "plays"], ["the", "cat", "is", "playing"]],
        "def_2_9": [["a", "man", "drives"]],
    }
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (tmp_path / "train_list.txt").write_text("abc_1_5\n")
    (tmp_path / "test_list.txt").write_text("def_2_9\nabc_1_5\n")
    touch(tmp_path / "videos" / "abc_1_5.avi")
    touch(tmp_path / "videos" / "def_2_9.avi")
    train = read_msvd(tmp_path, "train")
    assert len(train) == 1 and train[0].captions == ["a cat plays", "the cat is playing"]
    test = read_msvd(tmp_path, "test")
    assert [r.video_id for r in test] == ["def_2_9", "abc_1_5"]
    assert [len(r.captions) for r in test] == [1, 2]
    with pytest.raises(AnnotationError, match=re.escape("val_list.txt")):
        read_msvd(tmp_path, "val")


def test_msvd_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"a": [Evil()]}))
    (tmp_path / "train_list.txt").write_text("a\n")
    with pytest.raises(AnnotationError, match=r"raw-captions.pkl: not a readable caption pickle"):
        read_msvd(tmp_path, "train")


# --------------------------------------------------------------------------- LSMDC

CLIP_A = "0001_American_Beauty_00.00.51.926-00.00.54.154"
CLIP_B = "1012_Unbreakable_01.02.03.000-01.02.07.500"


def test_lsmdc_movie_folders_flat_fallback_and_bad_row(tmp_path: Path, caplog) -> None:
    (tmp_path / "LSMDC16_annos_training.csv").write_text(
        f"{CLIP_A}\t00.00.51.926\t00.00.54.154\t00.00.51.000\t00.00.55.000\tSomeone walks in.\n"
        f"{CLIP_B}\t1\t2\t3\t4\tHe looks up.\n"
        "broken_row\tonly three\tcolumns\n"
        f"{CLIP_A}\t00.00.51.926\t00.00.54.154\t00.00.51.000\t00.00.55.000\tSomeone enters.\n"
    )
    touch(tmp_path / "videos" / "0001_American_Beauty" / f"{CLIP_A}.avi")
    touch(tmp_path / "videos" / f"{CLIP_B}.avi")  # flat layout
    with caplog.at_level(logging.WARNING):
        train = read_lsmdc(tmp_path, "train")
    assert "LSMDC16_annos_training.csv, line 3" in caplog.text
    assert [r.video_id for r in train] == [CLIP_A, CLIP_B]
    assert train[0].captions == ["Someone walks in.", "Someone enters."]
    assert train[0].path == tmp_path / "videos" / "0001_American_Beauty" / f"{CLIP_A}.avi"
    assert train[1].path == tmp_path / "videos" / f"{CLIP_B}.avi"
    assert train[0].meta["start_aligned"] == "00.00.51.926"
    with pytest.raises(AnnotationError, match=re.escape("LSMDC16_challenge_1000_publictect.csv")):
        read_lsmdc(tmp_path, "test")


# --------------------------------------------------------------------------- DiDeMo


def test_didemo_paragraph_window_and_moments(tmp_path: Path) -> None:
    entries = [
        {"video": "111@N00_22_aa.mov", "description": "a dog jumps", "times": [[0, 0], [0, 1]]},
        {"video": "333@N00_44_bb.mov", "description": "a car stops", "times": [[2, 3]]},
        {"video": "111@N00_22_aa.mov", "description": "the dog sits", "times": [[4, 5]]},
        {"video": "333@N00_44_bb.mov", "description": "bad times", "times": "later"},
    ]
    (tmp_path / "test_data.json").write_text(json.dumps(entries))
    touch(tmp_path / "videos" / "111@N00_22_aa.mov.mp4")
    touch(tmp_path / "videos" / "333@N00_44_bb.mp4")
    records = read_didemo(tmp_path, "test")
    assert [r.captions for r in records] == [["a dog jumps the dog sits"], ["a car stops"]]
    assert all(r.window == (0.0, 31.0) for r in records)
    assert records[0].path.name == "111@N00_22_aa.mov.mp4"
    assert records[1].path.name == "333@N00_44_bb.mp4"
    # Annotators (0,0) and (0,1): mean start chunk 0, mean end chunk 0.5 -> 0 s to 7.5 s.
    assert (records[0].segments[0].start, records[0].segments[0].end) == (0.0, 7.5)
    assert (records[0].segments[1].start, records[0].segments[1].end) == (20.0, 30.0)
    assert len(records[1].segments) == 1


# --------------------------------------------------------------------------- ActivityNet


def test_activitynet_paragraph_prefix_and_val1_as_test(tmp_path: Path) -> None:
    data = {
        "v_abc": {
            "duration": 20.0,
            "timestamps": [[0, 5.5], [6, 20]],
            "sentences": ["A man enters. ", " He sits down."],
        },
        "v_xyz": {"duration": 10.0, "timestamps": [[0, 1]], "sentences": ["one", "two"]},
    }
    (tmp_path / "val_1.json").write_text(json.dumps(data))
    touch(tmp_path / "videos" / "abc.mkv")  # saved without the v_ prefix
    touch(tmp_path / "videos" / "v_xyz.mp4")
    records = read_activitynet(tmp_path, "test")
    assert [r.video_id for r in records] == ["v_abc"]  # v_xyz has mismatched timestamps
    assert records[0].captions == ["A man enters. He sits down."]
    assert records[0].window is None
    assert [(s.start, s.end) for s in records[0].segments] == [(0.0, 5.5), (6.0, 20.0)]
    assert records[0].path.name == "abc.mkv"
    with pytest.raises(AnnotationError, match=re.escape("train.json")):
        read_activitynet(tmp_path, "train")


# --------------------------------------------------------------------------- YouCook2


def write_youcook2(root: Path) -> None:
    database = {
        "vid1": {
            "duration": 100.0,
            "subset": "training",
            "recipe_type": "113",
            "annotations": [
                {"segment": [10, 20], "sentence": "crack the eggs", "id": 0},
                {"segment": [30, 45], "sentence": "whisk them", "id": 1},
            ],
        },
        "vid2": {
            "duration": 50.0,
            "subset": "validation",
            "recipe_type": "201",
            "annotations": [{"segment": [5, 9], "sentence": "slice bread", "id": 0}],
        },
    }
    (root / "youcookii_annotations_trainval.json").write_text(json.dumps({"database": database}))
    touch(root / "videos" / "vid1.mp4")
    touch(root / "videos" / "validation" / "201" / "vid2.webm")  # official nested layout


def test_youcook2_segments_subsets_and_clip_expansion(tmp_path: Path) -> None:
    write_youcook2(tmp_path)
    train = read_youcook2(tmp_path, "train")
    assert [r.video_id for r in train] == ["vid1"]
    assert train[0].captions == ["crack the eggs", "whisk them"]
    assert [(s.start, s.end, s.text) for s in train[0].segments] == [
        (10.0, 20.0, "crack the eggs"),
        (30.0, 45.0, "whisk them"),
    ]
    test = read_youcook2(tmp_path, "test")
    assert [r.video_id for r in test] == ["vid2"]
    assert test[0].path == tmp_path / "videos" / "validation" / "201" / "vid2.webm"
    clips = expand_segments(train)
    assert [(c.video_id, c.window, c.captions) for c in clips] == [
        ("vid1#0", (10.0, 20.0), ["crack the eggs"]),
        ("vid1#1", (30.0, 45.0), ["whisk them"]),
    ]
    assert all(c.path == train[0].path for c in clips)


# --------------------------------------------------------------------------- custom


def test_custom_csv_windows_splits_and_paths(tmp_path: Path, caplog) -> None:
    touch(tmp_path / "clips" / "a.mp4")
    absolute = touch(tmp_path / "elsewhere" / "b.webm")
    (tmp_path / "ann.csv").write_text(
        "video,caption,start,end,split\n"
        "clips/a.mp4,a cat,,,train\n"
        "clips/a,a small cat,,,train\n"
        "clips/a.mp4,a cat jumps,2,4,train\n"
        f"{absolute},a bird,,,test\n"
        "clips/a.mp4,bad window,5,,train\n"
    )
    with caplog.at_level(logging.WARNING):
        train = read_custom(tmp_path / "ann.csv", "train")
    assert "ann.csv, line 6" in caplog.text
    assert [(r.video_id, r.captions, r.window) for r in train] == [
        ("clips/a.mp4", ["a cat", "a small cat"], None),  # "clips/a" is the same file
        ("clips/a.mp4#2-4", ["a cat jumps"], (2.0, 4.0)),
    ]
    assert train[0].path == tmp_path / "clips" / "a.mp4"
    test = read_custom(tmp_path / "ann.csv", "test")
    assert [r.path for r in test] == [absolute]


def test_custom_jsonl_without_split_serves_every_split(tmp_path: Path) -> None:
    touch(tmp_path / "v" / "x.mp4")
    (tmp_path / "caps.jsonl").write_text(
        '{"video": "x.mp4", "caption": "one"}\nnot json\n{"video": "x.mp4", "caption": "two"}\n'
    )
    for split in ("train", "test"):
        records = read_custom(tmp_path / "caps.jsonl", split, video_dir=tmp_path / "v")
        assert len(records) == 1 and records[0].captions == ["one", "two"]
        assert records[0].split == split


def test_custom_header_and_format_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("path,text\nx.mp4,hello\n")
    with pytest.raises(AnnotationError, match=r"a.csv: .*'video' is missing"):
        read_custom(tmp_path / "a.csv", "train")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        read_custom(tmp_path / "a.txt", "train")


# --------------------------------------------------------------------------- dispatch


def test_read_dataset_dispatch_and_config_window(tmp_path: Path) -> None:
    write_msrvtt(tmp_path)
    cfg = DataConfig(dataset="synthetic", root=tmp_path, window=(1.0, 9.0))
    records = read_dataset(cfg, "test")
    assert [r.video_id for r in records] == ["video2", "video3"]
    assert all(r.window == (1.0, 9.0) for r in records)
    yc = tmp_path / "yc"
    yc.mkdir()
    write_youcook2(yc)
    assert read_dataset(DataConfig(dataset="youcook2", root=yc), "train")[0].video_id == "vid1"
    with pytest.raises(AnnotationError, match=re.escape("data.annotation")):
        read_dataset(DataConfig(dataset="custom", root=tmp_path), "train")
