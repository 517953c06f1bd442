"""SPEC §0 frame selection as pure functions of timestamps."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtrkit.data.sampling import (
    first_frame_per_interval,
    interval_of,
    sample_frame_indices,
    uniform_subsample,
)


def reference_subsample(count: int, num_frames: int) -> list[int]:
    """linspace(0, count-1, num_frames) rounded half up, in exact rational arithmetic."""
    if count <= num_frames:
        return list(range(count))
    if num_frames == 1:
        return [0]
    return [
        math.floor(Fraction(i * (count - 1), num_frames - 1) + Fraction(1, 2))
        for i in range(num_frames)
    ]


def test_interval_boundaries_and_window():
    assert interval_of(0.0) == 0
    assert interval_of(0.999) == 0
    assert interval_of(1.0) == 1
    # A float that should have been 1.0 (e.g. 30 ticks of 1/30 s) still counts as on the boundary.
    assert interval_of(sum([1 / 30] * 30)) == 1
    assert interval_of(0.9999999999) == 1
    assert interval_of(-0.5) is None
    assert interval_of(0.25, fps=4) == 1
    # Intervals start at the window start; the window is half-open.
    assert interval_of(2.0, window=(1.5, 3.0)) == 0
    assert interval_of(2.5, window=(1.5, 3.0)) == 1
    assert interval_of(1.4, window=(1.5, 3.0)) is None
    assert interval_of(3.0, window=(1.5, 3.0)) is None


def test_first_frame_of_each_second_constant_rate():
    times = [i / 10 for i in range(35)]  # 3.5 s at 10 fps
    assert first_frame_per_interval(times) == [0, 10, 20, 30]
    assert first_frame_per_interval(times, fps=2) == [0, 5, 10, 15, 20, 25, 30]
    assert first_frame_per_interval(times, window=(1.0, 2.5)) == [10, 20]
    assert first_frame_per_interval(times, fps=2, window=(1.0, 2.5)) == [10, 15, 20]
    # 29.97 fps: the first frame of second 1 is at 1.001 s.
    ntsc = [i * 1001 / 30000 for i in range(100)]
    assert first_frame_per_interval(ntsc) == [0, 30, 60, 90]


def test_variable_rate_gaps_and_decode_order():
    # No frame during second 2: it contributes nothing (no duplicate of a neighbour).
    times = [0.0, 0.1, 0.15, 0.9, 1.35, 3.2, 3.25, 4.0]
    assert first_frame_per_interval(times) == [0, 4, 5, 7]
    # Decode order differs from presentation order with B-frames: the earliest time wins.
    decode_order = [0.0, 0.3, 0.1, 0.2, 1.2, 1.0, 1.1]
    assert first_frame_per_interval(decode_order) == [0, 5]


def test_uniform_subsample_known_answers():
    assert uniform_subsample(20, 12) == [0, 2, 3, 5, 7, 9, 10, 12, 14, 16, 17, 19]
    # Exact halves round up: linspace(0, 6, 5) = 0, 1.5, 3, 4.5, 6.
    assert uniform_subsample(7, 5) == [0, 2, 3, 5, 6]
    assert uniform_subsample(5, 12) == [0, 1, 2, 3, 4]
    assert uniform_subsample(12, 12) == list(range(12))
    assert uniform_subsample(100, 1) == [0]
    assert uniform_subsample(0, 12) == []
    with pytest.raises(ValueError, match="num_frames"):
        uniform_subsample(10, 0)


@given(count=st.integers(0, 400), num_frames=st.integers(1, 64))
def test_uniform_subsample_matches_exact_reference(count: int, num_frames: int):
    positions = uniform_subsample(count, num_frames)
    assert positions == reference_subsample(count, num_frames)
    assert len(positions) == min(count, num_frames)
    assert all(a < b for a, b in itertools.pairwise(positions))
    if count > 1 and num_frames > 1:
        assert positions[0] == 0 and positions[-1] == count - 1


def test_sample_frame_indices_combines_both_steps():
    times = [i / 10 for i in range(300)]  # 30 s at 10 fps: 30 one-per-second candidates
    expected = [10 * p for p in reference_subsample(30, 12)]
    assert sample_frame_indices(times, num_frames=12) == expected
    # Short clips keep every candidate.
    assert sample_frame_indices(times[:45], num_frames=12) == [0, 10, 20, 30, 40]
    assert sample_frame_indices(times, num_frames=12, window=(100.0, 200.0)) == []


@pytest.mark.parametrize(
    ("fps", "window", "message"),
    [
        (0.0, None, "fps"),
        (-1.0, None, "fps"),
        (float("nan"), None, "fps"),
        (1.0, (3.0, 2.0), "window"),
        (1.0, (-1.0, 2.0), "window"),
        (1.0, (1.0, float("inf")), "window"),
    ],
)
def test_bad_arguments_are_named(fps, window, message):
    with pytest.raises(ValueError, match=message):
        first_frame_per_interval([0.0, 1.0], fps=fps, window=window)
