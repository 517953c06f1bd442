"""The built-in synthetic benchmark: procedural videos written as real MP4 files plus annotations.

``generate`` writes, under ``out_dir``:

- ``videos/<video_id>.mp4`` and the MSR-VTT files ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``
  and ``MSRVTT_JSFUSION_test.csv`` (read back by :func:`vtrkit.data.datasets.read_msrvtt`);
- ``subsets.json`` (the evaluator's format: subset name -> test video ids): ``order`` (test videos
  whose hardest distractor has the same events in another order, generated in pairs) and
  ``attribute`` (distractor differs in one colour or shape word, also in pairs);
- ``twins.json``: ``order_pairs`` / ``attribute_pairs`` (the twin pairs themselves) and ``vague``
  (training videos whose caption was replaced by a vague one; the sentence keeps the original as
  ``clean_caption``);
- ``synthetic_meta.json``: the generation settings and every video's plan (objects, timed events);
- ``long/``: narrated long videos in the YouCook2 layout (``youcookii_annotations_trainval.json``
  and ``long/videos/``), one timed segment per event, split training/validation. Two options
  (:mod:`vtrkit.data.synthetic_long`, both off by default) make VideoCLIP's conditions:
  ``long_topics`` groups the long videos into topics (``long/topics.json``: topic -> video ids;
  each video's topic in ``long/synthetic_meta.json``), and ``long_speech`` gives the *training*
  videos speech-like narration (shifted, dropped, merged, cut and filler lines; each annotation's
  ``events`` lists the events it narrates, ``clean_annotations`` keeps the exact ones), while
  validation videos keep their exactly timed segments.

Determinism: every split draws from its own stream seeded by ``(seed, split)``, so the output
depends only on the arguments; in particular the vague captions come from a separate stream, and
``vague_share=0`` with the same seed yields the same videos with clean captions (a clean teacher
set for CLIP2TV's distillation); likewise the speech-like narration has its own stream, so it
changes no video. Videos are encoded with fixed single-threaded x264 settings, so
files are byte-identical across runs with the same PyAV/FFmpeg build.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vtrkit.data.synthetic_long import (
    SpeechTiming,
    line_record,
    long_spans,
    sample_topic,
    speech_lines,
    topic_plan,
    topic_record,
)
from vtrkit.data.synthetic_render import encode_mp4, render
from vtrkit.data.synthetic_scene import (
    KINDS,
    STABLE_KINDS,
    Plan,
    attribute_twin,
    caption,
    event_phrases,
    reordered,
    sample_plan,
    vague_caption,
)

logger = logging.getLogger(__name__)

EVENT_COUNTS = (1, 2, 3)
EVENT_COUNT_P = (0.2, 0.45, 0.35)
META_FILE = "synthetic_meta.json"
TOPICS_FILE = "topics.json"
LONG_VALIDATION_SHARE = 0.2
_STREAM_TRAIN, _STREAM_TEST, _STREAM_LONG, _STREAM_VAGUE, _STREAM_TOPICS, _STREAM_SPEECH = range(6)


@dataclass
class SyntheticSummary:
    """What :func:`generate` wrote; ``str()`` gives a short human summary."""

    out_dir: Path
    n_train: int
    n_test: int
    n_long: int
    order: int
    attribute: int
    vague: int
    unique_train_captions: int
    seconds: float
    megabytes: float
    long_segments: int = 0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"synthetic benchmark in {self.out_dir}: {self.n_train} train videos "
            f"({self.unique_train_captions} distinct captions, {self.vague} made vague), "
            f"{self.n_test} test videos ({self.order} in the order subset, {self.attribute} in "
            f"the attribute subset), {self.n_long} long narrated videos ({self.long_segments} "
            f"segments) under long/; {self.megabytes:.1f} MB in {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class _Job:
    plan: Plan
    path: Path
    size: int
    fps: float


def _render_job(job: _Job) -> int:
    encode_mp4(render(job.plan, job.size, job.fps), job.path, job.fps)
    return job.path.stat().st_size


def _num_events(rng: np.random.Generator) -> int:
    return int(rng.choice(EVENT_COUNTS, p=EVENT_COUNT_P))


def _train_plans(rng: np.random.Generator, n: int, duration: float, fps: float) -> list[Plan]:
    return [sample_plan(rng, duration, fps, _num_events(rng)) for _ in range(n)]


def _test_plans(
    rng: np.random.Generator,
    n: int,
    duration: float,
    fps: float,
    order_share: float,
    attribute_share: float,
) -> tuple[list[Plan], list[tuple[int, int]], list[tuple[int, int]]]:
    """``n`` plans with unique captions, including deliberate order and attribute twin pairs.

    Returns the plans (shuffled) and the index pairs of the order and attribute twins.
    """
    n_order = round(n * order_share / 2)
    n_attr = round(n * attribute_share / 2)
    if 2 * (n_order + n_attr) > n:
        raise ValueError(
            f"order_share + attribute_share ({order_share} + {attribute_share}) exceeds 1"
        )
    used: set[str] = set()
    groups: list[tuple[str, list[Plan]]] = []
    budget = 200 * n + 1000  # caption space is ~1e5, so running out means a bug, not bad luck

    def fresh(*plans: Plan) -> bool:
        texts = [caption(p) for p in plans]
        if len(set(texts)) != len(texts) or used.intersection(texts):
            return False
        used.update(texts)
        return True

    wanted = [("order", n_order), ("attribute", n_attr), ("plain", n - 2 * (n_order + n_attr))]
    for kind, count in wanted:
        made = 0
        while made < count:
            budget -= 1
            if budget < 0:
                raise RuntimeError(f"could not draw {count} unique {kind} test captions")
            if kind == "order":
                plan = sample_plan(rng, duration, fps, int(rng.integers(2, 4)), STABLE_KINDS)
                twin = reordered(plan, rng)
            elif kind == "attribute":
                plan = sample_plan(rng, duration, fps, _num_events(rng))
                twin = attribute_twin(plan, rng)
            else:
                plan, twin = sample_plan(rng, duration, fps, _num_events(rng)), None
            members = [plan] if kind == "plain" else [plan, twin]
            if twin is None and kind != "plain":
                continue
            if fresh(*members):
                groups.append((kind, members))
                made += 1
    order = rng.permutation(sum(len(m) for _, m in groups))
    flat = [(kind, g, plan) for g, (kind, members) in enumerate(groups) for plan in members]
    shuffled = [flat[int(i)] for i in order]
    position: dict[int, list[int]] = {}
    for pos, (_, g, _) in enumerate(shuffled):
        position.setdefault(g, []).append(pos)
    pairs: dict[str, list[tuple[int, int]]] = {"order": [], "attribute": []}
    for g, (kind, _) in enumerate(groups):
        if kind in pairs:
            a, b = position[g]
            pairs[kind].append((a, b))
    return [p for _, _, p in shuffled], pairs["order"], pairs["attribute"]


def _long_plan(rng: np.random.Generator, duration: float, fps: float) -> Plan:
    """Whole-second event spans of 3-6 s separated by 1-3 s pauses, as narrated segments."""
    spans = long_spans(rng, duration)
    count = int(rng.integers(2, 4))
    return sample_plan(rng, duration, fps, len(spans), KINDS, num_objects=count, spans=spans)


def _long_validation_count(n_long: int) -> int:
    """How many of the long videos (the last ones) form the validation split."""
    return 0 if n_long < 2 else max(1, round(LONG_VALIDATION_SHARE * n_long))


def _topic_assignment(n_long: int, n_topics: int) -> list[int]:
    """Each long video's topic: the training videos, then the validation videos, cycle through
    the topics, so both splits cover every topic they can."""
    if not n_topics:
        return []
    n_train = n_long - _long_validation_count(n_long)
    return [(k if k < n_train else k - n_train) % n_topics for k in range(n_long)]


def _long_database(
    long_ids: list[str],
    long: list[Plan],
    duration: float,
    speech: SpeechTiming | None,
    rng: np.random.Generator,
) -> dict[str, dict]:
    """The YouCook2 ``database``: the last ``LONG_VALIDATION_SHARE`` of the videos validate,
    with exactly timed segments; training videos get speech-like lines when ``speech`` is set."""
    n_long = len(long_ids)
    n_val = _long_validation_count(n_long)
    database = {}
    for k, (vid, plan) in enumerate(zip(long_ids, long, strict=True)):
        phrases = event_phrases(plan)
        annotations = [
            {"segment": [int(e.start), int(e.end)], "sentence": text, "id": j}
            for j, (e, text) in enumerate(zip(plan.events, phrases, strict=True))
        ]
        training = k < n_long - n_val
        item: dict[str, object] = {
            "duration": duration,
            "subset": "training" if training else "validation",
            "recipe_type": "synthetic",
            "annotations": annotations,
            "video_url": "",
        }
        if training and speech is not None:
            spans = [(e.start, e.end) for e in plan.events]
            lines = speech_lines(rng, spans, phrases, duration, speech)
            item["annotations"] = [line_record(line, j) for j, line in enumerate(lines)]
            item["clean_annotations"] = annotations
        database[vid] = item
    return database


def _prepare_dir(out_dir: Path) -> None:
    """Create ``out_dir``; clear the videos of a previous generation, refuse any other content."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file():
        raise ValueError(
            f"{out_dir} is not empty and holds no {META_FILE}: choose an empty or new folder "
            "for the synthetic benchmark"
        )
    for folder in (out_dir / "videos", out_dir / "long" / "videos"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.mp4"):
            old.unlink()


def _write_json(path: Path, data: object, indent: int | None = None) -> None:
    path.write_text(json.dumps(data, indent=indent) + "\n")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _run_jobs(jobs: list[_Job], workers: int) -> int:
    """Render and encode every job, in ``workers`` processes; returns the bytes written."""
    if workers <= 1 or len(jobs) < 8:
        return sum(_render_job(job) for job in jobs)
    # spawn: the caller may hold threads (torch, a DataLoader) that fork would copy mid-state.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return sum(pool.imap_unordered(_render_job, jobs, chunksize=16))


def generate(
    out_dir: Path | str,
    n_train: int = 2000,
    n_test: int = 1000,
    n_long: int = 200,
    vague_share: float = 0.0,
    seed: int = 0,
    *,
    size: int = 64,
    duration: float = 12.0,
    fps: float = 4.0,
    long_duration: float = 60.0,
    order_share: float = 0.2,
    attribute_share: float = 0.2,
    workers: int = 2,
    long_topics: int = 0,
    long_speech: SpeechTiming | None = None,
) -> SyntheticSummary:
    """Write the synthetic benchmark (see the module docstring) and return a summary.

    ``size`` is the frame side in pixels (even, for yuv420p), ``duration``/``long_duration`` the
    clip lengths in seconds and ``fps`` the frame rate. ``order_share``/``attribute_share`` are
    the fractions of the test split generated as twin pairs for those subsets; ``vague_share``
    the fraction of training captions replaced by vague ones. ``workers`` processes encode.
    ``long_topics`` > 0 groups the long videos into that many topics (the training and the
    validation videos each cycle through them); ``long_speech`` gives the long training videos speech-like narration
    (:mod:`vtrkit.data.synthetic_long`). Their defaults leave the output as it always was.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test), ("n_long", n_long)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= vague_share <= 1.0:
        raise ValueError(f"vague_share must be between 0 and 1, got {vague_share}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 16, got {size}")
    if duration <= 0 or fps <= 0:
        raise ValueError(f"duration and fps must be positive, got {duration} s at {fps} fps")
    if long_topics < 0:
        raise ValueError(f"long_topics must be >= 0, got {long_topics}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _prepare_dir(out_dir)

    def stream(k: int) -> np.random.Generator:
        return np.random.default_rng([seed, k])

    train = _train_plans(stream(_STREAM_TRAIN), n_train, duration, fps)
    test, order_pairs, attr_pairs = _test_plans(
        stream(_STREAM_TEST), n_test, duration, fps, order_share, attribute_share
    )
    long_rng = stream(_STREAM_LONG)
    topic_rng = stream(_STREAM_TOPICS)
    topics = [sample_topic(topic_rng) for _ in range(long_topics)]
    topic_of = _topic_assignment(n_long, len(topics))
    if topics:
        long = [topic_plan(long_rng, topics[t], long_duration) for t in topic_of]
    else:
        long = [_long_plan(long_rng, long_duration, fps) for _ in range(n_long)]

    train_ids = [f"video{i}" for i in range(n_train)]
    test_ids = [f"video{n_train + i}" for i in range(n_test)]
    long_ids = [f"long{i:04d}" for i in range(n_long)]
    clean = {vid: caption(p) for vid, p in zip(train_ids + test_ids, train + test, strict=True)}

    vague_rng = stream(_STREAM_VAGUE)
    n_vague = round(vague_share * n_train)
    vague_idx = sorted(int(i) for i in vague_rng.permutation(n_train)[:n_vague])
    shown = dict(clean)
    for i in vague_idx:
        shown[train_ids[i]] = vague_caption(train[i], vague_rng)

    # ------------------------------------------------------------ MSR-VTT layout
    videos_meta = [
        {"video_id": vid, "split": split, "duration": duration, "fps": fps}
        for ids, split in ((train_ids, "train"), (test_ids, "test"))
        for vid in ids
    ]
    sentences = []
    for k, vid in enumerate(train_ids + test_ids):
        entry = {"video_id": vid, "caption": shown[vid], "sen_id": k}
        if shown[vid] != clean[vid]:
            entry["clean_caption"] = clean[vid]
        sentences.append(entry)
    _write_json(out_dir / "MSRVTT_data.json", {"videos": videos_meta, "sentences": sentences})
    _write_csv(out_dir / "MSRVTT_train.9k.csv", ["video_id"], [[v] for v in train_ids])
    _write_csv(
        out_dir / "MSRVTT_JSFUSION_test.csv",
        ["key", "vid_key", "video_id", "sentence"],
        [[f"ret{i}", f"msr{i}", vid, shown[vid]] for i, vid in enumerate(test_ids)],
    )
    subsets = {
        "order": sorted({test_ids[i] for pair in order_pairs for i in pair}, key=test_ids.index),
        "attribute": sorted({test_ids[i] for pair in attr_pairs for i in pair}, key=test_ids.index),
    }
    _write_json(out_dir / "subsets.json", subsets, indent=1)
    twins = {
        "order_pairs": [[test_ids[a], test_ids[b]] for a, b in order_pairs],
        "attribute_pairs": [[test_ids[a], test_ids[b]] for a, b in attr_pairs],
        "vague": [train_ids[i] for i in vague_idx],
    }
    _write_json(out_dir / "twins.json", twins, indent=1)

    # ------------------------------------------------------------ YouCook2 layout
    speech_rng = stream(_STREAM_SPEECH)
    database = _long_database(long_ids, long, long_duration, long_speech, speech_rng)
    _write_json(out_dir / "long" / "youcookii_annotations_trainval.json", {"database": database})
    topics_file = out_dir / "long" / TOPICS_FILE
    if topics:
        members = {
            f"topic{t:03d}": [v for v, u in zip(long_ids, topic_of, strict=True) if u == t]
            for t in range(len(topics))
        }
        _write_json(topics_file, members, indent=1)
    elif topics_file.is_file():  # left by an earlier generation with topics
        topics_file.unlink()

    settings = {
        "seed": seed,
        "size": size,
        "fps": fps,
        "duration": duration,
        "long_duration": long_duration,
        "vague_share": vague_share,
        "order_share": order_share,
        "attribute_share": attribute_share,
    }
    if long_topics:
        settings["long_topics"] = long_topics
    if long_speech is not None:
        settings["long_speech"] = asdict(long_speech)
    plans = dict(zip(train_ids + test_ids, train + test, strict=True))
    _write_json(
        out_dir / META_FILE,
        {"settings": settings, "videos": {v: asdict(p) for v, p in plans.items()}},
    )
    long_meta: dict[str, object] = {
        "settings": settings,
        "videos": {v: asdict(p) for v, p in zip(long_ids, long, strict=True)},
    }
    if topics:
        long_meta["topics"] = [topic_record(t) for t in topics]
        long_meta["video_topics"] = dict(zip(long_ids, topic_of, strict=True))
    _write_json(out_dir / "long" / META_FILE, long_meta)

    # ------------------------------------------------------------ videos
    jobs = [_Job(p, out_dir / "videos" / f"{v}.mp4", size, fps) for v, p in plans.items()]
    jobs += [
        _Job(p, out_dir / "long" / "videos" / f"{v}.mp4", size, fps)
        for v, p in zip(long_ids, long, strict=True)
    ]
    total_bytes = _run_jobs(jobs, workers)
    seconds = time.perf_counter() - started
    summary = SyntheticSummary(
        out_dir=out_dir,
        n_train=n_train,
        n_test=n_test,
        n_long=n_long,
        order=len(subsets["order"]),
        attribute=len(subsets["attribute"]),
        vague=n_vague,
        unique_train_captions=len({shown[v] for v in train_ids}),
        seconds=seconds,
        megabytes=total_bytes / 1e6,
        long_segments=sum(len(p.events) for p in long),
    )
    logger.info("%s", summary)
    return summary
