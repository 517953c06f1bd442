"""Window splitting: known answers and coverage properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrkit.index.build.windows import split_windows


def test_short_video_is_one_window():
    assert split_windows(3.5, 10.0, 5.0) == [(0.0, 3.5)]
    assert split_windows(10.0, 10.0, 5.0) == [(0.0, 10.0)]


def test_regular_windows_and_tail_aligned_to_the_end():
    assert split_windows(12.0, 4.0, 2.0) == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 12)]
    # 11 s with 4 s windows every 3 s: 0-4, 3-7, 6-10, then the tail 7-11.
    assert split_windows(11.0, 4.0, 3.0) == [(0, 4), (3, 7), (6, 10), (7, 11)]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="stride"):
        split_windows(10.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="positive"):
        split_windows(10.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="duration"):
        split_windows(float("nan"), 2.0, 1.0)


@settings(deadline=None, max_examples=60)  # shared CPUs: timing is not what is tested
@given(
    duration=st.floats(0.0, 500.0),
    length=st.floats(0.5, 60.0),
    fraction=st.floats(0.2, 1.0),
)
def test_windows_cover_the_video_without_running_past_it(duration, length, fraction):
    stride = length * fraction
    windows = split_windows(duration, length, stride)
    assert windows[0][0] == 0.0
    assert windows[-1][1] == pytest.approx(duration, abs=1e-6)
    for (s0, e0), (s1, e1) in itertools.pairwise(windows):
        assert s1 > s0 and s1 <= e0 + 1e-9  # consecutive windows overlap or touch: no gap
        assert e1 - s1 == pytest.approx(length)
    for start, end in windows:
        assert 0.0 <= start < end + 1e-12 <= duration + 1e-6
        assert end - start <= length + 1e-9
