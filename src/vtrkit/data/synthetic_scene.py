"""Scenes and event sequences of the synthetic benchmark, and the captions that describe them.

A scene is 1-3 objects (colour x shape) on a background; a plan is the scene's initial state plus
a sequence of non-overlapping timed events. Every event is checked against the simulated state
(objects stay inside the frame, sizes stay visible, no two objects ever share a description), so
a caption built from the events is always true of the rendered video. Coordinates are fractions of
the frame (x right, y down); radii are fractions of the frame side.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (45, 85, 240),
    "yellow": (240, 225, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 215, 225),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
KINDS: tuple[str, ...] = ("move", "appear", "disappear", "grow", "shrink", "recolour")
"""Event families; ``move`` carries a direction and ``recolour`` a new colour as its argument."""
STABLE_KINDS: tuple[str, ...] = ("move", "grow", "shrink")
"""Events that keep every object's description and visibility: any order of them is valid."""

STEP = 0.28  # distance of one move, in frame widths
SIZE_FACTOR = 1.5  # grow multiplies the radius by this, shrink divides by it
RADII = (0.08, 0.1, 0.12)
MIN_RADIUS, MAX_RADIUS = 0.05, 0.19
MARGIN = 0.02

VAGUE_CAPTIONS: dict[str, tuple[str, ...]] = {
    "move": ("a shape moves", "an object moves", "an object changes"),
    "appear": ("something appears", "an object changes"),
    "disappear": ("something disappears", "an object changes"),
    "grow": ("an object changes size", "an object changes"),
    "shrink": ("an object changes size", "an object changes"),
    "recolour": ("an object changes colour", "an object changes"),
}


@dataclass(frozen=True)
class ObjectState:
    """One object at one moment; ``colour`` is a key of :data:`COLOURS`."""

    colour: str
    shape: str
    x: float
    y: float
    r: float
    visible: bool

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Event:
    """Object ``obj`` does ``kind`` (``arg``: a direction or a colour) from ``start`` to ``end`` s."""

    obj: int
    kind: str
    arg: str
    start: float
    end: float


@dataclass(frozen=True)
class Background:
    """``plain`` (one grey) or ``checker`` / ``stripes`` (two close greys, ``cell`` px wide)."""

    kind: str
    level: int
    level2: int
    cell: int


@dataclass(frozen=True)
class Plan:
    """Everything needed to render one video and caption it."""

    objects: tuple[ObjectState, ...]
    events: tuple[Event, ...]
    background: Background
    duration: float


def apply_event(state: ObjectState, event: Event) -> ObjectState:
    """The object's state after ``event`` (no validity check)."""
    if event.kind == "move":
        dx, dy = DIRECTIONS[event.arg]
        return replace(state, x=state.x + STEP * dx, y=state.y + STEP * dy)
    if event.kind == "grow":
        return replace(state, r=state.r * SIZE_FACTOR)
    if event.kind == "shrink":
        return replace(state, r=state.r / SIZE_FACTOR)
    if event.kind == "appear":
        return replace(state, visible=True)
    if event.kind == "disappear":
        return replace(state, visible=False)
    if event.kind == "recolour":
        return replace(state, colour=event.arg)
    raise ValueError(f"unknown event kind {event.kind!r}")


def _inside(state: ObjectState) -> bool:
    lo, hi = state.r + MARGIN, 1.0 - state.r - MARGIN
    return lo <= state.x <= hi and lo <= state.y <= hi


def event_allowed(objects: tuple[ObjectState, ...], event: Event) -> bool:
    """Whether ``event`` can happen in the scene state ``objects``."""
    before = objects[event.obj]
    if event.kind == "appear":
        return not before.visible
    if not before.visible:
        return False
    after = apply_event(before, event)
    if event.kind == "recolour":
        others = {o.name for i, o in enumerate(objects) if i != event.obj}
        return after.colour != before.colour and after.name not in others
    return _inside(after) and MIN_RADIUS <= after.r <= MAX_RADIUS


def simulate(plan: Plan) -> list[tuple[ObjectState, ...]]:
    """Scene states before the first event and after each event; raises if an event is invalid."""
    states = [plan.objects]
    for event in plan.events:
        current = states[-1]
        if not event_allowed(current, event):
            raise ValueError(f"event {event} is not possible in state {current}")
        states.append(
            tuple(apply_event(o, event) if i == event.obj else o for i, o in enumerate(current))
        )
    return states


def is_valid(plan: Plan) -> bool:
    try:
        simulate(plan)
    except ValueError:
        return False
    names = [o.name for o in plan.objects]
    return len(set(names)) == len(names)


def phrase(state: ObjectState, event: Event) -> str:
    """Words for one event, naming the object as it looks when the event starts."""
    subject = f"a {state.name}"
    if event.kind == "move":
        return f"{subject} moves {event.arg}"
    if event.kind == "recolour":
        return f"{subject} turns {event.arg}"
    verbs = {"appear": "appears", "disappear": "disappears", "grow": "grows", "shrink": "shrinks"}
    return f"{subject} {verbs[event.kind]}"


def event_phrases(plan: Plan) -> list[str]:
    """One phrase per event, in time order (the narration of long videos)."""
    states = simulate(plan)
    return [phrase(states[k][e.obj], e) for k, e in enumerate(plan.events)]


def caption(plan: Plan) -> str:
    """The events in order: ``"a red circle moves left, then a blue square appears"``."""
    return ", then ".join(event_phrases(plan))


def vague_caption(plan: Plan, rng: np.random.Generator) -> str:
    """A caption true of the video but shared by many: it names only the first event's kind."""
    options = VAGUE_CAPTIONS[plan.events[0].kind]
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------- sampling


def sample_background(rng: np.random.Generator) -> Background:
    kind = ("plain", "checker", "stripes")[int(rng.integers(3))]
    level = int(rng.integers(25, 95))
    level2 = level + int(rng.integers(12, 28)) if kind != "plain" else level
    return Background(kind, level, level2, int(rng.integers(4, 12)))


def sample_objects(rng: np.random.Generator, count: int) -> tuple[ObjectState, ...]:
    """``count`` objects with distinct descriptions, spread over distinct cells of a 3x3 grid."""
    names: set[tuple[str, str]] = set()
    colours = list(COLOURS)
    while len(names) < count:
        names.add(
            (colours[int(rng.integers(len(colours)))], SHAPES[int(rng.integers(len(SHAPES)))])
        )
    cells = rng.permutation(9)[:count]
    objects = []
    for (colour, shape), cell in zip(sorted(names), cells, strict=True):
        # Jitter inside the cell keeps objects apart at the start without a regular grid.
        x = (cell % 3 + 0.5 + rng.uniform(-0.2, 0.2)) / 3
        y = (cell // 3 + 0.5 + rng.uniform(-0.2, 0.2)) / 3
        r = float(RADII[int(rng.integers(len(RADII)))])
        x = float(np.clip(x, r + MARGIN, 1 - r - MARGIN))
        y = float(np.clip(y, r + MARGIN, 1 - r - MARGIN))
        objects.append(ObjectState(colour, shape, x, y, r, bool(rng.random() < 0.8)))
    order = rng.permutation(count)  # sorted names above; shuffle so object 0 is not biased
    return tuple(objects[i] for i in order)


def candidate_events(
    objects: tuple[ObjectState, ...], kinds: tuple[str, ...], start: float, end: float
) -> dict[str, list[Event]]:
    """Every allowed event per kind family, for a given time span."""
    found: dict[str, list[Event]] = {}
    for i, obj in enumerate(objects):
        for kind in kinds:
            if kind == "move":
                args = list(DIRECTIONS)
            elif kind == "recolour":
                args = [c for c in COLOURS if c != obj.colour]
            else:
                args = [""]
            for arg in args:
                event = Event(i, kind, arg, start, end)
                if event_allowed(objects, event):
                    found.setdefault(kind, []).append(event)
    return found


def sample_event(
    rng: np.random.Generator,
    objects: tuple[ObjectState, ...],
    kinds: tuple[str, ...],
    start: float,
    end: float,
) -> Event | None:
    """A random allowed event: a kind family uniformly, then one of its events uniformly."""
    found = candidate_events(objects, kinds, start, end)
    if not found:
        return None
    family = sorted(found)[int(rng.integers(len(found)))]
    options = found[family]
    return options[int(rng.integers(len(options)))]


def event_spans(
    rng: np.random.Generator, count: int, duration: float, fps: float
) -> list[tuple[float, float]]:
    """``count`` disjoint spans, one in each equal slot of the video, snapped to frame times."""
    slot = duration / count
    spans = []
    for k in range(count):
        start = k * slot + slot * rng.uniform(0.1, 0.35)
        length = slot * rng.uniform(0.4, 0.55)
        spans.append((round(start * fps) / fps, round((start + length) * fps) / fps))
    return spans


def sample_plan(
    rng: np.random.Generator,
    duration: float,
    fps: float,
    num_events: int,
    kinds: tuple[str, ...] = KINDS,
    num_objects: int | None = None,
    spans: list[tuple[float, float]] | None = None,
) -> Plan:
    """A valid plan with ``num_events`` events (fewer only if the scene runs out of options)."""
    count = num_objects if num_objects is not None else int(rng.integers(1, 4))
    while True:
        objects = sample_objects(rng, count)
        if kinds == STABLE_KINDS:
            objects = tuple(replace(o, visible=True) for o in objects)
        times = spans if spans is not None else event_spans(rng, num_events, duration, fps)
        state, events = objects, []
        for start, end in times:
            event = sample_event(rng, state, kinds, start, end)
            if event is None:
                break
            events.append(event)
            state = tuple(
                apply_event(o, event) if i == event.obj else o for i, o in enumerate(state)
            )
        if events:
            return Plan(objects, tuple(events), sample_background(rng), duration)


# ---------------------------------------------------------------------- hard-negative twins


def _words_differ(a: str, b: str) -> int | None:
    """Number of differing words of two captions of equal length, None if lengths differ."""
    wa, wb = a.split(), b.split()
    if len(wa) != len(wb):
        return None
    return sum(x != y for x, y in zip(wa, wb, strict=True))


def reordered(plan: Plan, rng: np.random.Generator) -> Plan | None:
    """The same scene with the same events in another order (same time spans), or None.

    Only plans made of :data:`STABLE_KINDS` qualify: their events neither rename nor hide an
    object, so the two captions contain the same phrases and differ only in their order.
    """
    if len(plan.events) < 2 or any(e.kind not in STABLE_KINDS for e in plan.events):
        return None
    original = caption(plan)
    for _ in range(8):
        order = rng.permutation(len(plan.events))
        events = tuple(
            replace(plan.events[j], start=plan.events[k].start, end=plan.events[k].end)
            for k, j in enumerate(order)
        )
        twin = replace(plan, events=events)
        if is_valid(twin) and caption(twin) != original:
            return twin
    return None


def attribute_twin(plan: Plan, rng: np.random.Generator) -> Plan | None:
    """The same video with one object's initial colour or shape changed so that exactly one word
    of the caption differs, or None when no such change exists."""
    original = caption(plan)
    for obj in rng.permutation(len(plan.objects)):
        state = plan.objects[int(obj)]
        swaps = [replace(state, colour=c) for c in COLOURS if c != state.colour]
        swaps += [replace(state, shape=s) for s in SHAPES if s != state.shape]
        for k in rng.permutation(len(swaps)):
            objects = list(plan.objects)
            objects[int(obj)] = swaps[int(k)]
            twin = replace(plan, objects=tuple(objects))
            if is_valid(twin) and _words_differ(original, caption(twin)) == 1:
                return twin
    return None
