"""Long synthetic videos for VideoCLIP's conditions: topics and speech-like training narration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vtrkit.data.datasets import read_youcook2
from vtrkit.data.synthetic import generate
from vtrkit.data.synthetic_long import SpeechTiming, speech_lines
from vtrkit.data.synthetic_scene import COLOURS, DIRECTIONS, SHAPES

ANNOTATIONS = "long/youcookii_annotations_trainval.json"
# Every word a clean caption can use, stated independently of the generator's phrase code.
CAPTION_WORDS = {"a", *COLOURS, *SHAPES, *DIRECTIONS}
CAPTION_WORDS |= {"moves", "appears", "disappears", "grows", "shrinks", "turns", "then", "and"}
DEFAULT_FILES = (
    "MSRVTT_data.json",
    "MSRVTT_train.9k.csv",
    "MSRVTT_JSFUSION_test.csv",
    "subsets.json",
    "twins.json",
    "synthetic_meta.json",
    ANNOTATIONS,
    "long/synthetic_meta.json",
)
# sha256 over DEFAULT_FILES of generate(n_train=6, n_test=4, n_long=3, vague_share=0.5, seed=5,
# long_duration=30), written by the generator before the long-video options existed: the
# defaults must keep producing exactly this benchmark (the plans in the meta files fix the
# videos, whose bytes also depend on the FFmpeg build).
DEFAULT_DIGEST = "a3fe5741a05e59768ec5081c649c96f69509c1daafc9643843e6a11a24337e4d"
N_LONG, TOPICS, DURATION = 15, 3, 30.0


def _database(root: Path) -> dict:
    return json.loads((root / ANNOTATIONS).read_text())["database"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same topical long videos with exactly timed and with speech-like narration."""
    base = tmp_path_factory.mktemp("long")
    common = dict(n_train=0, n_test=0, n_long=N_LONG, seed=4, workers=1, long_duration=DURATION)
    generate(base / "clean", long_topics=TOPICS, **common)
    generate(base / "speech", long_topics=TOPICS, long_speech=SpeechTiming(), **common)
    return base / "clean", base / "speech"


def test_default_output_is_unchanged(tmp_path: Path) -> None:
    kwargs = dict(n_train=6, n_test=4, n_long=3, vague_share=0.5, seed=5, long_duration=30.0)
    generate(tmp_path / "a", workers=1, **kwargs)
    generate(tmp_path / "b", workers=1, long_topics=0, long_speech=None, **kwargs)
    digest = hashlib.sha256()
    for name in DEFAULT_FILES:
        digest.update((tmp_path / "a" / name).read_bytes())
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert digest.hexdigest() == DEFAULT_DIGEST
    assert not (tmp_path / "a" / "long" / "topics.json").exists()
    assert "clean_annotations" not in json.dumps(_database(tmp_path / "a"))


def test_speech_changes_only_the_training_narration(pair) -> None:
    clean, speech = pair
    videos = sorted(p.relative_to(clean) for p in clean.rglob("*.mp4"))
    assert len(videos) == N_LONG
    for rel in videos:  # narration has its own random stream: the videos are the same
        assert (clean / rel).read_bytes() == (speech / rel).read_bytes()
    a, b = _database(clean), _database(speech)
    subsets = [a[v]["subset"] for v in sorted(a)]
    assert subsets.count("validation") == round(0.2 * N_LONG)
    for vid in a:
        if a[vid]["subset"] == "validation":
            assert b[vid] == a[vid]  # clean, exactly timed segments
        else:
            assert b[vid]["clean_annotations"] == a[vid]["annotations"]
            assert b[vid]["annotations"] != a[vid]["annotations"]
    # The reader takes the speech-like lines as the training narration.
    train = {r.video_id: r for r in read_youcook2(speech / "long", "train")}
    for vid, record in train.items():
        lines = b[vid]["annotations"]
        assert [(s.start, s.end, s.text) for s in record.segments] == [
            (*line["segment"], line["sentence"]) for line in lines
        ]


def test_speech_lines_stay_within_the_shift_of_their_events(pair) -> None:
    _, speech = pair
    shifts = []
    for item in _database(speech).values():
        if item["subset"] != "training":
            continue
        clean = item["clean_annotations"]
        spoken: dict[tuple[int, ...], list[dict]] = {}
        for line in item["annotations"]:
            if line["events"]:
                spoken.setdefault(tuple(line["events"]), []).append(line)
        seen = [e for events in spoken for e in events]
        assert len(seen) == len(set(seen)) and set(seen) <= set(range(len(clean)))
        assert seen  # at least one event is narrated
        for events, pieces in spoken.items():
            # A cut line's pieces together say the line; a merged line joins narrated events in
            # time order (an unnarrated event between them is skipped).
            assert list(events) == sorted(set(events))
            text = " ".join(p["sentence"] for p in sorted(pieces, key=lambda p: p["segment"]))
            assert text == " and then ".join(clean[e]["sentence"] for e in events)
            start = min(p["segment"][0] for p in pieces)
            end = max(p["segment"][1] for p in pieces)
            assert abs(start - clean[events[0]]["segment"][0]) <= 5.0 + 1e-9
            assert abs(end - clean[events[-1]]["segment"][1]) <= 5.0 + 1e-9
            assert 0.0 <= start <= end <= DURATION
            if len(events) == 1 and len(pieces) == 1:
                shifts.append(start - clean[events[0]]["segment"][0])
    shifts = np.asarray(shifts)
    assert (shifts < -1).any() and (shifts > 1).any()  # both directions, not a fixed offset


def test_speech_timing_bounds_over_many_draws() -> None:
    timing = SpeechTiming(max_shift=2.5, drop_share=0.3, merge_share=0.0, cut_share=0.0)
    spans = [(2.0, 6.0), (8.0, 11.0), (13.0, 19.0), (21.0, 25.0)]
    phrases = ["a red circle grows", "a blue cross moves up", "a cyan square", "a green circle"]
    largest = 0.0
    for seed in range(300):
        lines = speech_lines(np.random.default_rng(seed), spans, phrases, 26.0, timing)
        assert [line.start for line in lines] == sorted(line.start for line in lines)
        events = [line for line in lines if line.events]
        assert events  # never every event dropped
        for line in events:
            (j,) = line.events
            assert line.text == phrases[j]
            # One shift moves start and end; the line is clipped to the video's 0-26 s.
            (start, end), delta = spans[j], line.end - spans[j][1]
            if line.end == 26.0:
                delta = line.start - start
                assert end + delta >= 26.0 - 1e-9
            assert line.start == pytest.approx(max(start + delta, 0.0))
            assert abs(delta) <= 2.5 + 1e-9
            largest = max(largest, abs(delta))
    assert largest == pytest.approx(2.5)
    exact = SpeechTiming(max_shift=0, drop_share=0, merge_share=0, cut_share=0, filler_rate=0)
    lines = speech_lines(np.random.default_rng(0), spans, phrases, 26.0, exact)
    assert [(x.start, x.end, x.text) for x in lines] == [
        (*s, p) for s, p in zip(spans, phrases, strict=True)
    ]


def test_filler_only_in_training_narration(pair) -> None:
    _, speech = pair
    filler = []
    for item in _database(speech).values():
        for line in item["annotations"]:
            words = set(line["sentence"].replace("'", " ").split())
            if item["subset"] == "validation":
                assert "events" not in line and words <= CAPTION_WORDS
                assert all(isinstance(t, int) for t in line["segment"])
            elif not line["events"]:
                filler.append(line["sentence"])
                assert not words & CAPTION_WORDS - {"and", "then", "a"}, line
            else:
                assert words <= CAPTION_WORDS, line
    assert len(filler) >= 3


def test_topics_group_videos_by_objects_and_actions(pair) -> None:
    clean, speech = pair
    members = json.loads((clean / "long" / "topics.json").read_text())
    meta = json.loads((clean / "long" / "synthetic_meta.json").read_text())
    assert json.loads((speech / "long" / "topics.json").read_text()) == members
    assert len(members) == TOPICS
    ids = [v for group in members.values() for v in group]
    assert sorted(ids) == sorted(meta["videos"]) and len(ids) == len(set(ids)) == N_LONG
    db = _database(clean)
    phrases: dict[str, set[str]] = {}
    for t, (_, group) in enumerate(sorted(members.items())):
        topic = meta["topics"][t]
        actions = {tuple(a) for a in topic["actions"]}
        assert {db[v]["subset"] for v in group} == {"training", "validation"}
        for vid in group:
            plan = meta["videos"][vid]
            assert meta["video_topics"][vid] == t
            assert [f"{o['colour']} {o['shape']}" for o in plan["objects"]] == topic["objects"]
            assert all((e["obj"], e["kind"], e["arg"]) in actions for e in plan["events"])
            assert plan["background"]["kind"] == topic["background"]
            phrases[vid] = {a["sentence"] for a in db[vid]["annotations"]}
        # Mutual hard negatives: a topic's videos say more of the same things than two topics'.
    topic_of = meta["video_topics"]

    def overlap(a: str, b: str) -> float:
        return len(phrases[a] & phrases[b]) / len(phrases[a] | phrases[b])

    within = [overlap(a, b) for a in ids for b in ids if a < b and topic_of[a] == topic_of[b]]
    across = [overlap(a, b) for a in ids for b in ids if a < b and topic_of[a] != topic_of[b]]
    assert np.mean(within) > 0.3 > np.mean(across) + 0.2


def test_topical_speech_output_is_deterministic(tmp_path: Path, pair) -> None:
    _, speech = pair
    common = dict(n_train=0, n_test=0, n_long=N_LONG, workers=1, long_duration=DURATION)
    generate(tmp_path / "again", seed=4, long_topics=TOPICS, long_speech=SpeechTiming(), **common)
    generate(tmp_path / "other", seed=9, long_topics=TOPICS, long_speech=SpeechTiming(), **common)
    for name in (ANNOTATIONS, "long/synthetic_meta.json", "long/topics.json"):
        assert (tmp_path / "again" / name).read_bytes() == (speech / name).read_bytes()
    assert (tmp_path / "other" / ANNOTATIONS).read_bytes() != (speech / ANNOTATIONS).read_bytes()
    # Regenerating without topics into the same folder leaves no stale topic list behind.
    generate(tmp_path / "again", seed=4, **common)
    assert not (tmp_path / "again" / "long" / "topics.json").exists()
    with pytest.raises(ValueError, match="long_topics"):
        generate(tmp_path / "bad", long_topics=-1, **common, seed=0)
