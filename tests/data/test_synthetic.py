"""The synthetic benchmark: files the readers read back, captions true of the pixels, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from vtrkit.config import DataConfig
from vtrkit.data.datasets import expand_segments, read_dataset, read_msrvtt, read_youcook2
from vtrkit.data.synthetic import generate
from vtrkit.data.synthetic_scene import (
    COLOURS,
    STEP,
    VAGUE_CAPTIONS,
    Background,
    Event,
    ObjectState,
    Plan,
    caption,
    simulate,
)

SIZE, FPS, DURATION = 64, 4.0, 12.0
# What the words mean on screen (x right, y down), stated independently of the generator.
SCREEN_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ANNOTATION_FILES = (
    "MSRVTT_data.json",
    "MSRVTT_train.9k.csv",
    "MSRVTT_JSFUSION_test.csv",
    "subsets.json",
    "twins.json",
    "synthetic_meta.json",
    "long/youcookii_annotations_trainval.json",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    summary = generate(out, n_train=20, n_test=10, n_long=2, vague_share=0.3, seed=3, workers=1)
    assert (summary.n_train, summary.n_test, summary.n_long, summary.vague) == (20, 10, 2, 6)
    assert "20 train videos" in str(summary)
    return out


def plan_from_json(data: dict) -> Plan:
    return Plan(
        tuple(ObjectState(**o) for o in data["objects"]),
        tuple(Event(**e) for e in data["events"]),
        Background(**data["background"]),
        data["duration"],
    )


def decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def colour_pixels(frame: np.ndarray, colour: str) -> np.ndarray:
    """(y, x) of pixels within 45 levels of ``colour`` on every channel."""
    diff = np.abs(frame.astype(int) - np.asarray(COLOURS[colour])).max(axis=2)
    return np.argwhere(diff < 45)


def test_msrvtt_files_read_back(tiny: Path) -> None:
    train = read_msrvtt(tiny, "train")
    test = read_dataset(DataConfig(dataset="synthetic", root=tiny), "test")
    assert len(train) == 20 and len(test) == 10
    assert all(r.path.is_file() and r.path.suffix == ".mp4" for r in train + test)
    captions = [r.captions[0] for r in test]
    assert len(set(captions)) == 10  # unique test captions, as in MSR-VTT 1k-A
    assert not {r.video_id for r in train} & {r.video_id for r in test}


def test_subsets_are_true_twins(tiny: Path) -> None:
    subsets = json.loads((tiny / "twins.json").read_text())
    subsets.update(json.loads((tiny / "subsets.json").read_text()))
    shown = {r.video_id: r.captions[0] for r in read_msrvtt(tiny, "test")}
    assert len(subsets["order_pairs"]) == 1 and len(subsets["attribute_pairs"]) == 1  # 20% each
    for a, b in subsets["order_pairs"]:
        pa, pb = shown[a].split(", then "), shown[b].split(", then ")
        assert pa != pb and sorted(pa) == sorted(pb)
    for a, b in subsets["attribute_pairs"]:
        wa, wb = shown[a].split(), shown[b].split()
        assert len(wa) == len(wb) and sum(x != y for x, y in zip(wa, wb, strict=True)) == 1
        differing = next(x for x, y in zip(wa, wb, strict=True) if x != y)
        assert differing in COLOURS or differing in ("circle", "square", "triangle", "cross")
    assert set(subsets["order"]) == {v for pair in subsets["order_pairs"] for v in pair}


def test_vague_captions_recorded(tiny: Path) -> None:
    subsets = json.loads((tiny / "twins.json").read_text())
    data = json.loads((tiny / "MSRVTT_data.json").read_text())
    meta = json.loads((tiny / "synthetic_meta.json").read_text())["videos"]
    by_id = {s["video_id"]: s for s in data["sentences"]}
    vague_vocab = {c for options in VAGUE_CAPTIONS.values() for c in options}
    assert len(subsets["vague"]) == 6  # round(0.3 * 20)
    train = {r.video_id: r.captions[0] for r in read_msrvtt(tiny, "train")}
    for vid, text in train.items():
        clean = caption(plan_from_json(meta[vid]))
        if vid in subsets["vague"]:
            assert text in vague_vocab and by_id[vid]["clean_caption"] == clean
        else:
            assert text == clean and "clean_caption" not in by_id[vid]


def test_captions_describe_the_rendered_motion(tiny: Path) -> None:
    """Decode every video and check each move whose object colour is unique in its scene."""
    meta = json.loads((tiny / "synthetic_meta.json").read_text())["videos"]
    shown = {r.video_id: r.captions[0] for r in read_msrvtt(tiny, "test")}
    checked = 0
    for vid, data in meta.items():
        plan = plan_from_json(data)
        if vid in shown:
            assert shown[vid] == caption(plan)
        states = simulate(plan)
        frames = None
        for k, event in enumerate(plan.events):
            colours = [o.colour for o in states[k]]
            obj = states[k][event.obj]
            if event.kind != "move" or colours.count(obj.colour) != 1:
                continue
            if vid in shown:  # the caption's k-th phrase names this object and direction
                phrase = shown[vid].split(", then ")[k]
                assert phrase == f"a {obj.colour} {obj.shape} moves {event.arg}"
            frames = decode_all(tiny / "videos" / f"{vid}.mp4") if frames is None else frames
            assert frames.shape == (round(DURATION * FPS), SIZE, SIZE, 3)
            before = colour_pixels(frames[round(event.start * FPS)], obj.colour)
            after = colour_pixels(frames[min(round(event.end * FPS), len(frames) - 1)], obj.colour)
            assert len(before) > 10 and len(after) > 10, (vid, event)
            shift = (after.mean(0) - before.mean(0))[::-1]  # (x, y) in pixels
            expected = np.asarray(SCREEN_DIRECTIONS[event.arg]) * STEP * SIZE
            assert np.abs(shift - expected).max() < 3.0, (vid, event, shift)
            checked += 1
    assert checked >= 5


def test_long_videos_in_youcook2_layout(tiny: Path) -> None:
    train = read_youcook2(tiny / "long", "train")
    val = read_youcook2(tiny / "long", "val")
    assert len(train) == 1 and len(val) == 1
    record = train[0]
    assert len(record.segments) >= 4
    assert all(0 <= s.start < s.end <= 60 for s in record.segments)
    starts = [s.start for s in record.segments]
    assert starts == sorted(starts) and all(
        a.end <= b.start for a, b in zip(record.segments, record.segments[1:], strict=False)
    )
    frames = decode_all(record.path)
    assert frames.shape == (240, SIZE, SIZE, 3)
    clips = expand_segments(train)
    assert [c.window for c in clips] == [(s.start, s.end) for s in record.segments]


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(n_train=6, n_test=4, n_long=1, long_duration=20.0)
    a = generate(tmp_path / "a", seed=11, vague_share=0.5, workers=1, **kwargs)
    generate(tmp_path / "b", seed=11, vague_share=0.5, workers=2, **kwargs)  # process pool path
    generate(tmp_path / "clean", seed=11, vague_share=0.0, workers=1, **kwargs)
    generate(tmp_path / "other", seed=12, vague_share=0.5, workers=1, **kwargs)
    assert a.vague == 3
    for name in ANNOTATION_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    videos = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(videos) == 11
    for rel in videos:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        # Vague captions come from their own random stream: the videos do not change.
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "clean" / rel).read_bytes()
    assert (tmp_path / "a" / "MSRVTT_data.json").read_bytes() != (
        tmp_path / "other" / "MSRVTT_data.json"
    ).read_bytes()
    assert (tmp_path / "a" / videos[0]).read_bytes() != (
        tmp_path / "other" / videos[0]
    ).read_bytes()
    clean = {
        s["video_id"]: s["caption"]
        for s in json.loads((tmp_path / "clean" / "MSRVTT_data.json").read_text())["sentences"]
    }
    for s in json.loads((tmp_path / "a" / "MSRVTT_data.json").read_text())["sentences"]:
        assert s.get("clean_caption", s["caption"]) == clean[s["video_id"]]


def test_refuses_foreign_folder_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate(tmp_path, n_train=1, n_test=1, n_long=0)
    with pytest.raises(ValueError, match="vague_share"):
        generate(tmp_path / "x", n_train=1, n_test=1, n_long=0, vague_share=1.5)
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path / "y", n_train=1, n_test=1, n_long=0, size=63)
