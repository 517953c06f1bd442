"""The overlapping pair sampler of SPEC §3."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrkit.videoclip.sampler import (
    SamplerSettings,
    grow_text_span,
    grow_video_clip,
    sample_pair,
    span_seconds,
)


def _video(n_captions: int, gap: float, length: float, tokens: list[int]):
    spans = [(i * (length + gap), i * (length + gap) + length) for i in range(n_captions)]
    n_seconds = int(np.ceil(spans[-1][1])) + 3
    return spans, tokens, n_seconds


@settings(max_examples=200, deadline=None)
@given(
    n_captions=st.integers(1, 12),
    gap=st.floats(0.0, 6.0),
    length=st.floats(0.2, 20.0),
    tokens=st.lists(st.integers(1, 30), min_size=12, max_size=12),
    seed=st.integers(0, 2**31),
    aligned=st.booleans(),
)
def test_pairs_always_overlap_and_respect_bounds(n_captions, gap, length, tokens, seed, aligned):
    spans, counts, n_seconds = _video(n_captions, gap, length, tokens[:n_captions])
    cfg = SamplerSettings(aligned=aligned)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        pair = sample_pair(spans, counts, n_seconds, rng, cfg)
        text_lo, _ = span_seconds(*spans[pair.text_first], n_seconds)
        _, text_hi = span_seconds(*spans[pair.text_last], n_seconds)
        # Overlap: the clip shares at least one second with the text span (its centre).
        assert text_lo <= pair.centre < text_hi
        assert pair.video_start <= pair.centre < pair.video_end
        assert max(pair.video_start, text_lo) < min(pair.video_end, text_hi)
        assert 0 <= pair.video_start < pair.video_end <= n_seconds
        assert pair.video_seconds <= cfg.max_video_seconds
        if aligned:
            assert pair.video_seconds == min(text_hi - text_lo, cfg.max_video_seconds)
            assert text_lo <= pair.video_start and pair.video_end <= text_hi
        else:
            assert pair.video_seconds >= min(cfg.min_video_seconds, n_seconds)
        total = sum(counts[pair.text_first : pair.text_last + 1])
        all_used = pair.text_first == 0 and pair.text_last == n_captions - 1
        # The span stopped growing only because it reached the target (≥ 8) or ran out.
        assert all_used or total >= cfg.min_text_tokens
        # It never grew past a target of at most 64 tokens: without its last-added caption it
        # was still short of the target.
        if pair.text_first < pair.text_last:
            shorter = min(total - counts[pair.text_first], total - counts[pair.text_last])
            assert shorter < cfg.max_text_tokens


def test_video_growth_is_forced_at_the_edges():
    for seed in range(50):
        rng = np.random.default_rng(seed)
        assert grow_video_clip(0, 7, 100, rng) == (0, 7)
        assert grow_video_clip(99, 7, 100, rng) == (93, 100)
        # One second from the start: at most one step can go left.
        start, end = grow_video_clip(1, 7, 100, rng)
        assert start >= 0 and end - start == 7
        # Longer than the video: the whole video.
        assert grow_video_clip(4, 32, 10, rng) == (0, 10)


def test_text_growth_is_forced_at_the_edges():
    counts = [2] * 10
    for seed in range(50):
        rng = np.random.default_rng(seed)
        assert grow_text_span(0, counts, 8, rng) == (0, 3)
        assert grow_text_span(9, counts, 8, rng) == (6, 9)
        assert grow_text_span(5, counts, 1000, rng) == (0, 9)
        assert grow_text_span(5, counts, 1, rng) == (5, 5)


def test_growth_in_the_middle_goes_both_ways_evenly():
    rng = np.random.default_rng(0)
    starts = np.array([grow_video_clip(500, 2, 1000, rng)[0] for _ in range(4000)])
    left_share = (starts == 499).mean()
    assert 0.46 < left_share < 0.54
    firsts = np.array([grow_text_span(50, [1] * 100, 2, rng)[0] for _ in range(4000)])
    assert 0.46 < (firsts == 49).mean() < 0.54


def test_length_distributions_are_uniform_over_their_ranges():
    rng = np.random.default_rng(1234)
    # 1 token per caption and a long video: lengths equal the drawn targets exactly.
    spans = [(float(i), float(i + 1)) for i in range(400)]
    counts = [1] * 400
    pairs = [sample_pair(spans, counts, 400, rng) for _ in range(12000)]
    video_lengths = np.array([p.video_seconds for p in pairs])
    text_lengths = np.array([p.text_last - p.text_first + 1 for p in pairs])
    for values, lo, hi in ((video_lengths, 3, 32), (text_lengths, 8, 64)):
        assert values.min() == lo and values.max() == hi
        hist = np.bincount(values - lo, minlength=hi - lo + 1)
        expected = len(values) / (hi - lo + 1)
        chi2 = float(((hist - expected) ** 2 / expected).sum())
        # 99.9% quantile of chi-square with 29 / 56 degrees of freedom is about 58 / 94.
        assert chi2 < (58 if hi == 32 else 94), chi2
    assert abs(video_lengths.mean() - 17.5) < 0.3
    assert abs(text_lengths.mean() - 36.0) < 0.5


def test_same_seed_same_pairs():
    spans = [(0.0, 4.0), (5.0, 9.5), (10.0, 30.0)]
    a = [sample_pair(spans, [3, 5, 7], 40, np.random.default_rng(7)) for _ in range(3)]
    b = [sample_pair(spans, [3, 5, 7], 40, np.random.default_rng(7)) for _ in range(3)]
    assert a == b


def test_aligned_clip_is_the_text_span():
    spans = [(2.2, 5.0), (40.0, 90.0)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        pair = sample_pair(spans, [20, 20], 100, rng, SamplerSettings(aligned=True))
        if pair.text_first == pair.text_last == 0:
            assert (pair.video_start, pair.video_end) == (2, 5)
        else:
            # Longer than 32 s: a 32-s window of the span around the centre.
            assert pair.video_seconds == 32
            assert pair.video_start <= pair.centre < pair.video_end


def test_span_seconds_known_answers():
    assert span_seconds(2.2, 5.0, 100) == (2, 5)
    assert span_seconds(2.2, 5.1, 100) == (2, 6)
    assert span_seconds(3.0, 3.0, 100) == (3, 4)
    assert span_seconds(98.5, 120.0, 100) == (98, 100)
    assert span_seconds(150.0, 160.0, 100) == (99, 100)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="min_video_seconds"):
        SamplerSettings(min_video_seconds=10, max_video_seconds=5)
