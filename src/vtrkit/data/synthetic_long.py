"""Long narrated videos of the synthetic benchmark: topics and speech-like narration (SPEC §6).

Two options of :func:`vtrkit.data.synthetic.generate` build the conditions under which VideoCLIP's
claims can show; both are off by default (the long videos are then independent plans with exactly
timed narration, as before).

**Topics** (``long_topics``). A :class:`Topic` fixes a background, 2-3 objects (colour × shape) and
a small set of actions: 2-3 inverse pairs on some of its objects (moves left/right or up/down,
grows/shrinks, appears/disappears, turns to one colour and back). A topic's videos differ only in
where the objects start, which of them start hidden, and which of the topic's actions happen in
which order, so they are mutual hard negatives: their narrations share most phrases, while videos
of two topics rarely share an object. A retrieval-augmented batch (one topic's neighbours) is
therefore harder than a random one (mostly different topics).

**Speech-like narration** (``long_speech``, training videos only). Narrators do not speak exactly
while the thing happens. From each event's clean, exactly timed line, :func:`speech_lines` makes
subtitle-like lines: every line is shifted by a random ±0-``max_shift`` s (0.1-s steps, the same
shift for its start and end, clipped to the video); some events are not narrated (``drop_share``,
at least one line is kept); some lines are merged with the next one ("... and then ...",
``merge_share``); some are cut at a word boundary into two consecutive lines that split its time
(``cut_share``); and filler lines that describe nothing ("okay here we go") are added at random
times (``filler_rate`` per event). Validation videos keep their clean, exactly timed segments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vtrkit.data.synthetic_scene import (
    COLOURS,
    MARGIN,
    RADII,
    SHAPES,
    Background,
    Event,
    ObjectState,
    Plan,
    apply_event,
    event_allowed,
    sample_background,
)

ACTION_FAMILIES: tuple[str, ...] = ("horizontal", "vertical", "size", "visibility", "colour")
"""Inverse pairs a topic's actions come in; see :func:`sample_topic`."""
FILLER_LINES: tuple[str, ...] = (
    "okay here we go",
    "alright let's get started",
    "so now watch this part",
    "let me show you",
    "as you can see",
    "and that's about it",
    "um let's see",
    "keep watching",
    "so yeah",
    "this is the fun part",
    "thanks for watching",
    "okay so",
)
"""Lines that describe nothing: none of their words names a colour, shape, event or direction."""


@dataclass(frozen=True)
class Topic:
    """What every video of one topic shares.

    ``names[i]`` is the (colour, shape) of object slot ``i``; ``actions`` are (slot, kind, arg)
    event templates (see :class:`~vtrkit.data.synthetic_scene.Event`); slots in ``may_hide`` have
    the appear/disappear pair and start hidden with probability 0.5.
    """

    names: tuple[tuple[str, str], ...]
    actions: tuple[tuple[int, str, str], ...]
    may_hide: tuple[int, ...]
    background: Background


@dataclass(frozen=True)
class SpeechTiming:
    """How training narration departs from the exactly timed events (module docstring)."""

    max_shift: float = 5.0
    drop_share: float = 0.1
    merge_share: float = 0.15
    cut_share: float = 0.15
    filler_rate: float = 0.4

    def __post_init__(self) -> None:
        if self.max_shift < 0:
            raise ValueError(f"SpeechTiming.max_shift must be >= 0, got {self.max_shift}")
        for name in ("drop_share", "merge_share", "cut_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SpeechTiming.{name} must lie in [0, 1]")
        if self.filler_rate < 0:
            raise ValueError(f"SpeechTiming.filler_rate must be >= 0, got {self.filler_rate}")


@dataclass(frozen=True)
class NarrationLine:
    """One subtitle-like line: ``events`` lists the plan's events it speaks of (empty: filler)."""

    start: float
    end: float
    text: str
    events: tuple[int, ...]


def long_spans(rng: np.random.Generator, duration: float) -> list[tuple[float, float]]:
    """Whole-second event spans of 3-6 s separated by 1-3 s pauses, starting at 1-2 s."""
    spans: list[tuple[float, float]] = []
    t = int(rng.integers(1, 3))
    while True:
        length = int(rng.integers(3, 7))
        if t + length > duration - 1:
            break
        spans.append((float(t), float(t + length)))
        t += length + int(rng.integers(1, 4))
    if not spans:
        raise ValueError(f"long_duration {duration} s is too short for one narrated event")
    return spans


# ---------------------------------------------------------------------- topics


def _family_actions(
    family: str, slot: int, names: tuple[tuple[str, str], ...], rng: np.random.Generator
) -> list[tuple[int, str, str]]:
    """The inverse pair of ``family`` on object ``slot``."""
    if family == "horizontal":
        return [(slot, "move", "left"), (slot, "move", "right")]
    if family == "vertical":
        return [(slot, "move", "up"), (slot, "move", "down")]
    if family == "size":
        return [(slot, "grow", ""), (slot, "shrink", "")]
    if family == "visibility":
        return [(slot, "appear", ""), (slot, "disappear", "")]
    colour, shape = names[slot]
    targets = [c for c in COLOURS if c != colour and (c, shape) not in names]
    other = targets[int(rng.integers(len(targets)))]
    return [(slot, "recolour", other), (slot, "recolour", colour)]


def sample_topic(rng: np.random.Generator, pairs: int = 3) -> Topic:
    """A topic: 2-3 objects with distinct names and ``pairs`` inverse action pairs on them."""
    count = int(rng.integers(2, 4))
    names: list[tuple[str, str]] = []
    colours = list(COLOURS)
    while len(names) < count:
        name = (colours[int(rng.integers(len(colours)))], SHAPES[int(rng.integers(len(SHAPES)))])
        if name not in names:
            names.append(name)
    frozen = tuple(names)
    combos = [(slot, family) for slot in range(count) for family in ACTION_FAMILIES]
    chosen = [combos[int(i)] for i in rng.permutation(len(combos))[:pairs]]
    actions: list[tuple[int, str, str]] = []
    for slot, family in sorted(chosen):
        actions += _family_actions(family, slot, frozen, rng)
    hide = tuple(sorted({slot for slot, family in chosen if family == "visibility"}))
    return Topic(frozen, tuple(actions), hide, sample_background(rng))


def _topic_objects(rng: np.random.Generator, topic: Topic) -> tuple[ObjectState, ...]:
    """The topic's objects at random places (distinct cells of a 3x3 grid) and sizes."""
    cells = rng.permutation(9)[: len(topic.names)]
    objects = []
    for slot, ((colour, shape), cell) in enumerate(zip(topic.names, cells, strict=True)):
        r = float(RADII[int(rng.integers(len(RADII)))])
        x = (cell % 3 + 0.5 + rng.uniform(-0.2, 0.2)) / 3
        y = (cell // 3 + 0.5 + rng.uniform(-0.2, 0.2)) / 3
        x = float(np.clip(x, r + MARGIN, 1 - r - MARGIN))
        y = float(np.clip(y, r + MARGIN, 1 - r - MARGIN))
        visible = slot not in topic.may_hide or bool(rng.random() < 0.5)
        objects.append(ObjectState(colour, shape, x, y, r, visible))
    return tuple(objects)


def topic_plan(rng: np.random.Generator, topic: Topic, duration: float) -> Plan:
    """A long video of ``topic``: at each narrated span one of the topic's allowed actions."""
    spans = long_spans(rng, duration)
    while True:
        state = _topic_objects(rng, topic)
        objects, events = state, []
        for start, end in spans:
            options = [
                Event(slot, kind, arg, start, end)
                for slot, kind, arg in topic.actions
                if event_allowed(state, Event(slot, kind, arg, start, end))
            ]
            if not options:
                break
            event = options[int(rng.integers(len(options)))]
            events.append(event)
            state = tuple(
                apply_event(o, event) if i == event.obj else o for i, o in enumerate(state)
            )
        if events:
            return Plan(objects, tuple(events), topic.background, duration)


def topic_record(topic: Topic) -> dict:
    """``topic`` as JSON-ready data (``synthetic_meta.json``)."""
    return {
        "objects": [f"{c} {s}" for c, s in topic.names],
        "actions": [list(a) for a in topic.actions],
        "may_hide": list(topic.may_hide),
        "background": topic.background.kind,
    }


# ---------------------------------------------------------------------- narration


def _tenth(x: float) -> float:
    return round(x * 10) / 10


def _shifted(span: tuple[float, float], shift: float, duration: float) -> tuple[float, float]:
    """``span`` moved by ``shift`` seconds, kept inside the video (a start before its last
    second, an end after the start)."""
    start = min(max(span[0] + shift, 0.0), max(duration - 1.0, 0.0))
    end = min(max(span[1] + shift, start), duration)
    return _tenth(start), _tenth(end)


def _cut(line: NarrationLine, rng: np.random.Generator) -> list[NarrationLine]:
    """``line`` split at a random word boundary into two lines sharing its time by word count."""
    words = line.text.split()
    if len(words) < 2:
        return [line]
    k = int(rng.integers(1, len(words)))
    mid = _tenth(line.start + (line.end - line.start) * k / len(words))
    return [
        replace(line, end=mid, text=" ".join(words[:k])),
        replace(line, start=mid, text=" ".join(words[k:])),
    ]


def speech_lines(
    rng: np.random.Generator,
    spans: list[tuple[float, float]],
    phrases: list[str],
    duration: float,
    timing: SpeechTiming,
) -> list[NarrationLine]:
    """Speech-like narration of events at ``spans`` saying ``phrases`` (module docstring), sorted
    by start time."""
    n = len(spans)
    steps = round(timing.max_shift * 10)
    shifts = rng.choice([-1.0, 1.0], size=n) * rng.integers(0, steps + 1, size=n) / 10
    keep = rng.random(n) >= timing.drop_share
    if not keep.any():
        keep[int(rng.integers(n))] = True
    lines = [
        NarrationLine(*_shifted(spans[j], float(shifts[j]), duration), phrases[j], (j,))
        for j in range(n)
        if keep[j]
    ]
    merged: list[NarrationLine] = []
    k = 0
    while k < len(lines):
        line = lines[k]
        if k + 1 < len(lines) and rng.random() < timing.merge_share:
            nxt = lines[k + 1]
            line = NarrationLine(
                min(line.start, nxt.start),
                max(line.end, nxt.end),
                f"{line.text} and then {nxt.text}",
                line.events + nxt.events,
            )
            k += 1
        merged.append(line)
        k += 1
    out: list[NarrationLine] = []
    for line in merged:
        out += _cut(line, rng) if rng.random() < timing.cut_share else [line]
    for _ in range(int(rng.poisson(timing.filler_rate * n))):
        start = _tenth(float(rng.uniform(0.0, max(duration - 2.0, 0.0))))
        end = min(_tenth(start + float(rng.uniform(1.0, 3.0))), duration)
        text = FILLER_LINES[int(rng.integers(len(FILLER_LINES)))]
        out.append(NarrationLine(start, end, text, ()))
    return sorted(out, key=lambda line: (line.start, line.end))


def line_record(line: NarrationLine, k: int) -> dict:
    """A YouCook2 annotation of ``line`` (``events``: the plan's events it narrates)."""
    return {
        "segment": [line.start, line.end],
        "sentence": line.text,
        "id": k,
        "events": list(line.events),
    }
