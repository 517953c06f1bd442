"""Pretraining stills: captions true of the pixels, held-out compositions kept out, determinism,
and no still is a frame of the video benchmark's test split."""

from __future__ import annotations

import numpy as np
import pytest

from vtrkit.data.synthetic import _STREAM_TEST, _test_plans
from vtrkit.data.synthetic_render import render
from vtrkit.data.synthetic_scene import COLOURS, SHAPES
from vtrkit.data.synthetic_stills import (
    POSITION_PHRASES,
    SIZE_WORDS,
    StillStream,
    attribute_labels,
    heldout_compositions,
    render_still,
    still_pixels,
)

# Reading order of the 3x3 grid, stated independently of the generator: (row, column) -> name.
CELL_NAMES = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "centre",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}


@pytest.fixture(scope="module")
def stream() -> StillStream:
    return StillStream(seed=5, twins=0.5)


def colour_pixels(image: np.ndarray, colour: str) -> np.ndarray:
    """[K, 2] (row, col) of pixels showing exactly ``colour`` (object interiors)."""
    return np.argwhere((image == np.asarray(COLOURS[colour])).all(axis=-1))


def test_captions_name_what_the_pixels_show(stream: StillStream) -> None:
    size = 64
    for index in range(100):
        still = stream.still("train", 0, index)
        image = render_still(still, size)
        for obj in still.objects:
            assert f"{obj.colour} {obj.shape}" in still.caption
            assert any(
                f"{w} {obj.colour} {obj.shape}" in still.caption for w in SIZE_WORDS[obj.size]
            )
            assert any(p in still.caption for p in POSITION_PHRASES[obj.position])
            if sum(o.colour == obj.colour for o in still.objects) > 1:
                continue
            # The object's colour, drawn solid inside it, sits in the grid cell its name says.
            pixels = colour_pixels(image, obj.colour)
            assert len(pixels) > 10, (still, obj)
            row, col = (pixels.mean(0) * 3 // size).astype(int)
            assert CELL_NAMES[(int(row), int(col))] == obj.position, (still.caption, obj)


def test_size_words_mean_area(stream: StillStream) -> None:
    """Every small object covers fewer pixels than every large object of the same shape."""
    areas: dict[tuple[str, str], list[int]] = {}
    for index in range(200):
        still = stream.still("probe_train", 0, index)
        (obj,) = still.objects
        area = len(colour_pixels(render_still(still, 64), obj.colour))
        areas.setdefault((obj.shape, obj.size), []).append(area)
    for shape in SHAPES:
        assert max(areas[(shape, "small")]) < min(areas[(shape, "large")]), shape


def test_heldout_compositions_never_train(stream: StillStream) -> None:
    heldout = stream.heldout
    assert len(heldout) == 8 * 3
    pairs = {(c, s) for c, s, _ in heldout}
    assert len(pairs) == 8
    for index in range(1500):
        still = stream.still("train", 0, index)
        assert not {o.composition for o in still.objects} & heldout, still
    for index in range(200):
        still = stream.still("heldout", 0, index)
        assert {o.composition for o in still.objects} & heldout, still
    assert heldout_compositions(5, 8, 3) == heldout
    assert heldout_compositions(6, 8, 3) != heldout
    with pytest.raises(ValueError, match="heldout_pairs"):
        heldout_compositions(0, 25, 1)


def test_phrasing_and_order_vary(stream: StillStream) -> None:
    stills = stream.stills("train", 0, range(400))
    prefixes = {s.caption.split(" a ")[0] for s in stills}
    assert len(prefixes) >= 4
    # The first object drawn is named first in some captions and second in others.
    first_is_drawn = [
        s.caption.index(f"{s.objects[0].colour} {s.objects[0].shape}")
        < s.caption.index(f"{s.objects[1].colour} {s.objects[1].shape}")
        for s in stills
        if len(s.objects) == 2
    ]
    assert 0.3 < np.mean(first_is_drawn) < 0.7
    assert {len(s.objects) for s in stills} == {1, 2, 3}


def test_a_pure_function_of_seed_split_epoch_index(stream: StillStream) -> None:
    again = StillStream(seed=5, twins=0.5)
    for split in ("train", "heldout", "probe_test"):
        a, b = stream.still(split, 3, 17), again.still(split, 3, 17)
        assert a == b
        np.testing.assert_array_equal(render_still(a), render_still(b))
    assert stream.still("train", 0, 17) != stream.still("train", 1, 17)
    assert stream.still("train", 0, 17) != stream.still("train", 0, 18)
    assert stream.still("train", 0, 17) != StillStream(seed=6).still("train", 0, 17)
    with pytest.raises(ValueError, match="unknown stills split"):
        stream.still("test", 0, 0)


def test_video_test_split_first_frames_are_not_pretraining_images() -> None:
    """The benchmark's test videos (same seed as the stills) open on frames no still shows."""
    seed, size, fps, duration = 0, 64, 4.0, 12.0
    plans, _, _ = _test_plans(
        np.random.default_rng([seed, _STREAM_TEST]), 40, duration, fps, 0.2, 0.2
    )
    first_frames = {render(p, size, fps)[0].tobytes() for p in plans}
    stills = StillStream(seed=seed)
    for split in ("train", "heldout", "probe_train", "probe_test"):
        for index in range(300 if split == "train" else 100):
            assert render_still(stills.still(split, 0, index), size).tobytes() not in first_frames


def test_unique_gallery_and_labels(stream: StillStream) -> None:
    gallery = stream.unique_stills("heldout", 150)
    assert len({s.description for s in gallery}) == 150
    probes = stream.stills("probe_test", 0, range(50))
    labels = attribute_labels(probes)
    assert all(int(v.max()) < n for v, n in zip(labels.values(), (6, 4, 9, 2), strict=True))
    for i, s in enumerate(probes):
        assert list(COLOURS)[int(labels["colour"][i])] == s.objects[0].colour
        assert SHAPES[int(labels["shape"][i])] == s.objects[0].shape


def test_pixels_follow_the_video_frame_transform(stream: StillStream) -> None:
    import torch

    from vtrkit.data.transforms import preprocess

    stills = stream.stills("train", 0, range(4))
    pixels = still_pixels(stills, 32)
    assert pixels.shape == (4, 3, 32, 32)
    frames = torch.from_numpy(np.stack([render_still(s, 64) for s in stills]))
    torch.testing.assert_close(pixels, preprocess(frames, 32), rtol=0, atol=0)


def test_twins_differ_from_their_neighbour_in_one_attribute(stream: StillStream) -> None:
    def attributes(still) -> set[tuple[int, str, str]]:
        # Objects are kept in drawing order, so object k of a twin is object k of its base.
        return {
            (k, name, getattr(o, name))
            for k, o in enumerate(still.objects)
            for name in ("colour", "shape", "size", "position")
        }

    twins = 0
    changed_kinds = set()
    for index in range(1, 600, 2):
        base, other = stream.still("train", 0, index - 1), stream.still("train", 0, index)
        if other.background != base.background:
            continue
        twins += 1
        assert len(other.objects) == len(base.objects)
        differ = attributes(base) - attributes(other)
        assert len(differ) == 1, (base.caption, other.caption)
        changed_kinds.add(next(iter(differ))[1])
        assert other.caption != base.caption
    assert 0.35 < twins / 300 < 0.65
    assert changed_kinds == {"colour", "shape", "size", "position"}
    plain = StillStream(seed=5)
    assert all(
        plain.still("train", 0, i).background != plain.still("train", 0, i - 1).background
        for i in range(1, 200, 2)
    )
    with pytest.raises(ValueError, match="twins"):
        StillStream(seed=5, twins=1.5)


def test_twin_test_pairs_change_the_asked_attribute(stream: StillStream) -> None:
    for attribute in ("colour", "shape", "size", "position"):
        pairs = stream.twin_pairs(attribute, 20)
        assert len(pairs) == 20
        for base, twin in pairs:
            assert twin.background == base.background
            assert not {o.composition for o in base.objects + twin.objects} & stream.heldout
            changed = [
                (a, b)
                for a, b in zip(base.objects, twin.objects, strict=True)
                if (*a.composition, a.size) != (*b.composition, b.size)
            ]
            assert len(changed) == 1
            a, b = changed[0]
            differ = [
                n for n in ("colour", "shape", "size", "position") if getattr(a, n) != getattr(b, n)
            ]
            assert differ == [attribute]
    with pytest.raises(ValueError, match="unknown attribute"):
        stream.twin_pairs("texture", 1)


def test_twin_shape_share_weights_the_changed_attribute() -> None:
    shape_heavy = StillStream(seed=5, twins=1.0, twin_shape=0.7)
    kinds = []
    for index in range(1, 800, 2):
        base, twin = shape_heavy.still("train", 0, index - 1), shape_heavy.still("train", 0, index)
        for a, b in zip(base.objects, twin.objects, strict=True):
            kinds += [
                n for n in ("colour", "shape", "size", "position") if getattr(a, n) != getattr(b, n)
            ]
    assert len(kinds) == 400
    assert 0.6 < kinds.count("shape") / 400 < 0.8
