"""Still images with captions for image–text pretraining of the tiny CLIP (SPEC §6).

A still is 1-3 objects (colour x shape, as in the video benchmark) on one of the benchmark's
backgrounds; each object has a *size* (small, large) and a *position*, one cell of a 3x3 grid
(top left, top, top right, left, centre, right, bottom left, bottom, bottom right). The caption
says what the frame shows, with varied phrasing and object order: "two objects: a small red
circle at the top left and a big blue square on the right".

Nothing is stored: a still is a pure function of ``(seed, split, epoch, index)`` through its own
random stream (:meth:`StillStream.still`), disjoint from the streams of the video benchmark
(:mod:`vtrkit.data.synthetic` seeds its splits with ``[seed, k]``, two numbers; stills use five),
so a still is never a frame of a benchmark video.

**Held-out compositions.** A seeded set of (colour, shape, position) triples never appears in a
training still; the ``heldout`` split makes every still contain one of them (its other objects
are ordinary), for zero-shot image–text retrieval on compositions the model has not seen.
The ``probe_train`` / ``probe_test`` splits hold single-object training-distribution stills whose
attributes are the labels of the linear probes.

**Hard negatives.** In a batch of random stills colour and position almost always tell two
images apart, so nothing forces CLIP to read shape: measured on the demo's towers after 400 steps
without twins, "a big red circle in the centre" and "... square ..." had text cosine 0.997 and a
linear probe read shape from image features barely better than from the random initial weights
(45.8 vs 42.9 %, chance 25.8 %; 86.8 % from raw pixels). With ``twins`` a share of the training
stills come as pairs differing in one attribute of one object (:func:`attribute_twin`;
``twin_shape`` weights shape), and :meth:`StillStream.twin_pairs` gives the same kind of pairs
to test what a model tells apart. Measured: twins 0.5 (a quarter of them shape) left shape where
it was (probe 48.4 %, shape twins told apart 76 %, against 99 % for colour and position).

Images are rendered by :func:`vtrkit.data.synthetic_render.render` at the benchmark's render size
(64 px) and resized with the same transform as decoded video frames (antialiased bicubic).
Shapes: N stills, R render size, S model image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from vtrkit.data.synthetic_render import render
from vtrkit.data.synthetic_scene import (
    COLOURS,
    MARGIN,
    SHAPES,
    Background,
    ObjectState,
    Plan,
    sample_background,
)

POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
"""Grid cells in reading order: cell k is column ``k % 3``, row ``k // 3`` (y down)."""
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top": ("at the top", "near the top", "at the top middle"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "left": ("on the left", "at the left", "on the left side"),
    "centre": ("in the centre", "in the middle", "at the centre"),
    "right": ("on the right", "at the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom middle"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
SIZES: tuple[str, ...] = ("small", "large")
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
RADIUS_RANGES: dict[str, tuple[float, float]] = {"small": (0.065, 0.085), "large": (0.115, 0.14)}
"""Radius (fraction of the frame side) of each size; the video objects' radii lie in between
and around (0.05-0.19), and two large objects in neighbouring cells never touch."""
JITTER = 0.02
"""Largest offset of an object from its cell centre, in frame widths."""
COUNT_WORDS = ("one", "two", "three")
SPLITS: tuple[str, ...] = ("train", "heldout", "probe_train", "probe_test", "twin_test")
_STILLS_STREAM = 1009  # first number after the seed: keeps still streams apart from others
_HELDOUT_STREAM = 9

if TYPE_CHECKING:
    from vtrkit.config import PretrainConfig

Composition = tuple[str, str, str]
"""(colour, shape, position) of one object."""


@dataclass(frozen=True)
class StillObject:
    """One object of a still: names of its attributes and its geometry (fractions of the frame)."""

    colour: str
    shape: str
    size: str
    position: str
    x: float
    y: float
    r: float

    @property
    def composition(self) -> Composition:
        return (self.colour, self.shape, self.position)


@dataclass(frozen=True)
class Still:
    """A still image's content and its caption."""

    objects: tuple[StillObject, ...]
    background: Background
    caption: str

    @property
    def description(self) -> frozenset[tuple[str, str, str, str]]:
        """What the caption says, independent of phrasing and order: equal for equal content."""
        return frozenset((o.colour, o.shape, o.size, o.position) for o in self.objects)


def heldout_compositions(seed: int, pairs: int, positions: int) -> frozenset[Composition]:
    """``pairs`` colour-shape pairs, each held out at ``positions`` of the 9 positions (seeded).

    Positions are dealt round-robin over a shuffled order so that every position is held out
    about equally often.
    """
    every_pair = [(c, s) for c in COLOURS for s in SHAPES]
    if not 0 <= pairs <= len(every_pair):
        raise ValueError(f"pretrain.heldout_pairs must be in 0..{len(every_pair)}, got {pairs}")
    if not 1 <= positions < len(POSITIONS):
        raise ValueError(
            f"pretrain.heldout_positions must be in 1..{len(POSITIONS) - 1}, got {positions}"
        )
    rng = np.random.default_rng([seed, _STILLS_STREAM, _HELDOUT_STREAM])
    chosen = [every_pair[int(i)] for i in rng.permutation(len(every_pair))[:pairs]]
    order = [POSITIONS[int(i)] for i in rng.permutation(len(POSITIONS))]
    out = set()
    for k, (colour, shape) in enumerate(chosen):
        for j in range(positions):
            out.add((colour, shape, order[(k * positions + j) % len(order)]))
    return frozenset(out)


def _place(
    rng: np.random.Generator, colour: str, shape: str, cell: int, size: str | None = None
) -> StillObject:
    size = size or SIZES[int(rng.integers(len(SIZES)))]
    r = float(rng.uniform(*RADIUS_RANGES[size]))
    x = (cell % 3 + 0.5) / 3 + rng.uniform(-JITTER, JITTER)
    y = (cell // 3 + 0.5) / 3 + rng.uniform(-JITTER, JITTER)
    x = float(np.clip(x, r + MARGIN, 1 - r - MARGIN))
    y = float(np.clip(y, r + MARGIN, 1 - r - MARGIN))
    return StillObject(colour, shape, size, POSITIONS[cell], x, y, r)


def _allowed_names(
    cell: int, heldout: frozenset[Composition], taken: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    return [
        (c, s)
        for c in COLOURS
        for s in SHAPES
        if (c, s) not in taken and (c, s, POSITIONS[cell]) not in heldout
    ]


def sample_objects(
    rng: np.random.Generator,
    count: int,
    heldout: frozenset[Composition],
    include_heldout: bool = False,
) -> tuple[StillObject, ...]:
    """``count`` objects with distinct colour-shape names in distinct cells.

    None of them has a held-out composition, except that ``include_heldout`` makes the first
    one drawn a held-out composition (the objects are returned in drawing order; captions
    shuffle them).
    """
    cells = [int(c) for c in rng.permutation(len(POSITIONS))]
    objects: list[StillObject] = []
    taken: set[tuple[str, str]] = set()
    if include_heldout:
        if not heldout:
            raise ValueError("the heldout split needs held-out compositions (heldout_pairs > 0)")
        options = sorted(heldout)
        colour, shape, position = options[int(rng.integers(len(options)))]
        cell = POSITIONS.index(position)
        cells.remove(cell)
        objects.append(_place(rng, colour, shape, cell))
        taken.add((colour, shape))
    for cell in cells[: count - len(objects)]:
        names = _allowed_names(cell, heldout, taken)
        colour, shape = names[int(rng.integers(len(names)))]
        objects.append(_place(rng, colour, shape, cell))
        taken.add((colour, shape))
    return tuple(objects)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def object_phrase(rng: np.random.Generator, obj: StillObject) -> str:
    """``"a small red circle at the top left"`` with a random size word and position phrase."""
    size = _pick(rng, SIZE_WORDS[obj.size])
    return f"a {size} {obj.colour} {obj.shape} {_pick(rng, POSITION_PHRASES[obj.position])}"


def describe(rng: np.random.Generator, objects: Sequence[StillObject]) -> str:
    """A caption naming every object's size, colour, shape and position, in a random order and
    one of several phrasings (plain list, counted "two objects: ...", "an image of ...")."""
    phrases = [object_phrase(rng, objects[int(i)]) for i in rng.permutation(len(objects))]
    listed = phrases[-1] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    n = len(objects)
    noun = _pick(rng, ("object", "shape")) + ("s" if n > 1 else "")
    prefixes = ("", f"{COUNT_WORDS[n - 1]} {noun}: ", "an image of ", "a picture with ")
    return _pick(rng, prefixes) + listed


TWIN_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")


def _twin_object(
    rng: np.random.Generator,
    objects: Sequence[StillObject],
    k: int,
    attribute: str,
    heldout: frozenset[Composition],
) -> StillObject | None:
    """Object ``k`` with ``attribute`` changed (names and cells stay distinct, no held-out
    composition appears), or None when no such change exists."""
    obj = objects[k]
    others = [o for i, o in enumerate(objects) if i != k]
    names = {(o.colour, o.shape) for o in others}
    cells = {POSITIONS.index(o.position) for o in others}
    here = POSITIONS.index(obj.position)
    if attribute == "size":
        other = SIZES[1 - SIZES.index(obj.size)]
        return _place(rng, obj.colour, obj.shape, here, other)
    if attribute == "position":
        options = [
            c
            for c in range(len(POSITIONS))
            if c != here and c not in cells and (obj.colour, obj.shape, POSITIONS[c]) not in heldout
        ]
        if not options:
            return None
        return _place(
            rng, obj.colour, obj.shape, options[int(rng.integers(len(options)))], obj.size
        )
    values = list(COLOURS) if attribute == "colour" else list(SHAPES)
    current = getattr(obj, attribute)
    candidates = []
    for v in values:
        colour, shape = (v, obj.shape) if attribute == "colour" else (obj.colour, v)
        if (
            v != current
            and (colour, shape) not in names
            and (colour, shape, obj.position) not in heldout
        ):
            candidates.append((colour, shape))
    if not candidates:
        return None
    colour, shape = candidates[int(rng.integers(len(candidates)))]
    return replace(obj, colour=colour, shape=shape)


def attribute_twin(
    rng: np.random.Generator,
    still: Still,
    heldout: frozenset[Composition],
    weights: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
) -> Still | None:
    """``still`` with one attribute of one object changed, on the same background, captioned
    afresh: a hard negative for contrastive training. The attribute is drawn with ``weights``
    over :data:`TWIN_ATTRIBUTES` (colour, shape, size, position); None when no change exists."""
    p = np.asarray(weights, dtype=np.float64)
    for _ in range(8):
        k = int(rng.integers(len(still.objects)))
        attribute = TWIN_ATTRIBUTES[int(rng.choice(len(TWIN_ATTRIBUTES), p=p / p.sum()))]
        changed = _twin_object(rng, still.objects, k, attribute, heldout)
        if changed is not None:
            objects = tuple(changed if i == k else o for i, o in enumerate(still.objects))
            return Still(objects, still.background, describe(rng, objects))
    return None


class StillStream:
    """Stills as a pure function of ``(seed, split, epoch, index)``.

    Args:
        seed: the pretraining data seed (also fixes the held-out compositions).
        heldout_pairs, heldout_positions: see :func:`heldout_compositions`.
        max_objects: objects per still are uniform in 1..max_objects (probe stills have one).
        twins: share of the training pairs (2k, 2k + 1) whose second still is the first with
            one attribute changed (:func:`attribute_twin`); the pair shares every batch.
        twin_shape: share of those twins that change a shape; colour, size and position share
            the rest equally.
    """

    def __init__(
        self,
        seed: int,
        heldout_pairs: int = 8,
        heldout_positions: int = 3,
        max_objects: int = 3,
        twins: float = 0.0,
        twin_shape: float = 0.25,
    ) -> None:
        if not 1 <= max_objects <= 3:
            raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects}")
        if not 0.0 <= twins <= 1.0:
            raise ValueError(f"pretrain.twins must be between 0 and 1, got {twins}")
        self.seed = seed
        self.max_objects = max_objects
        if not 0.0 <= twin_shape <= 1.0:
            raise ValueError(f"pretrain.twin_shape must be between 0 and 1, got {twin_shape}")
        self.twins = twins
        rest = (1.0 - twin_shape) / 3
        self.twin_weights = (rest, twin_shape, rest, rest)  # TWIN_ATTRIBUTES order
        self.heldout = heldout_compositions(seed, heldout_pairs, heldout_positions)

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> StillStream:
        """The stills of a ``pretrain`` config section."""
        return cls(
            cfg.data_seed,
            cfg.heldout_pairs,
            cfg.heldout_positions,
            cfg.max_objects,
            cfg.twins,
            cfg.twin_shape,
        )

    def rng(self, split: str, epoch: int, index: int) -> np.random.Generator:
        if split not in SPLITS:
            raise ValueError(f"unknown stills split {split!r}; use one of {', '.join(SPLITS)}")
        return np.random.default_rng([self.seed, _STILLS_STREAM, SPLITS.index(split), epoch, index])

    def still(self, split: str, epoch: int, index: int) -> Still:
        """The still number ``index`` of ``epoch`` in ``split`` (evaluation splits use epoch 0)."""
        rng = self.rng(split, epoch, index)
        if split == "train" and index % 2 and self.twins and rng.random() < self.twins:
            base = self.still(split, epoch, index - 1)
            twin = attribute_twin(rng, base, self.heldout, self.twin_weights)
            if twin is not None:
                return twin
        single = split.startswith("probe")
        count = 1 if single else int(rng.integers(1, self.max_objects + 1))
        objects = sample_objects(rng, count, self.heldout, include_heldout=split == "heldout")
        background = sample_background(rng)
        return Still(objects, background, describe(rng, objects))

    def twin_pairs(self, attribute: str, count: int) -> list[tuple[Still, Still]]:
        """``count`` (still, twin) pairs of split ``twin_test`` (stills drawn as for training)
        whose twin changes ``attribute``: the test of what a model tells apart."""
        weights = [float(a == attribute) for a in TWIN_ATTRIBUTES]
        if not any(weights):
            raise ValueError(f"unknown attribute {attribute!r}; use one of {TWIN_ATTRIBUTES}")
        pairs: list[tuple[Still, Still]] = []
        index = 0
        while len(pairs) < count:
            base = self.still("twin_test", 0, index)
            twin = attribute_twin(self.rng("twin_test", 1, index), base, self.heldout, weights)
            if twin is not None:
                pairs.append((base, twin))
            index += 1
        return pairs

    def stills(self, split: str, epoch: int, indices: Sequence[int]) -> list[Still]:
        return [self.still(split, epoch, int(i)) for i in indices]

    def unique_stills(self, split: str, count: int) -> list[Still]:
        """The first ``count`` stills of ``split`` (epoch 0) whose descriptions are all distinct,
        so that each caption has exactly one matching image in a retrieval gallery."""
        out: list[Still] = []
        seen: set[frozenset[tuple[str, str, str, str]]] = set()
        index = 0
        while len(out) < count:
            if index > 50 * count + 1000:
                raise RuntimeError(
                    f"could not draw {count} stills with distinct captions from split {split!r}; "
                    "ask for fewer or hold out more compositions"
                )
            still = self.still(split, 0, index)
            index += 1
            if still.description not in seen:
                seen.add(still.description)
                out.append(still)
        return out


def render_still(still: Still, render_size: int = 64) -> np.ndarray:
    """The still drawn by the video renderer: uint8 [R, R, 3] RGB."""
    objects = tuple(ObjectState(o.colour, o.shape, o.x, o.y, o.r, True) for o in still.objects)
    plan = Plan(objects, (), still.background, 1.0)
    return render(plan, render_size, 1.0)[0]


def still_pixels(stills: Sequence[Still], image_size: int, render_size: int = 64) -> torch.Tensor:
    """Model input of N stills: float32 [N, 3, S, S], rendered at R px, resized with the video
    frames' transform (antialiased bicubic in uint8), scaled and normalised with CLIP's stats."""
    from vtrkit.data import transforms

    if not stills:
        return torch.zeros(0, 3, image_size, image_size)
    frames = torch.from_numpy(np.stack([render_still(s, render_size) for s in stills]))
    return transforms.preprocess(frames, image_size)


def attribute_labels(stills: Sequence[Still]) -> dict[str, torch.Tensor]:
    """Class indices of the first object of each still: ``colour`` (6), ``shape`` (4),
    ``position`` (9) and ``size`` (2), each long [N] (the probe targets)."""
    tables = {
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "position": list(POSITIONS),
        "size": list(SIZES),
    }
    return {
        name: torch.tensor([values.index(getattr(s.objects[0], name)) for s in stills])
        for name, values in tables.items()
    }


ATTRIBUTE_CLASSES: dict[str, int] = {
    "colour": len(COLOURS),
    "shape": len(SHAPES),
    "position": len(POSITIONS),
    "size": len(SIZES),
}
