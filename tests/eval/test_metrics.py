"""Ranks and metrics against a naive loop reference, hand-computed cases, ties and grouping."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtrkit.eval.metrics import (
    ranks_text_to_video,
    ranks_video_to_text,
    retrieval_metrics,
    video_group_scores,
)

# ---------------------------------------------------------------- naive reference (plain loops)


def naive_t2v_ranks(sim: list[list[float]], t2v: list[int]) -> list[int]:
    ranks = []
    for i, row in enumerate(sim):
        gt = row[t2v[i]]
        ranks.append(1 + sum(1 for x in row if x > gt))
    return ranks


def naive_v2t_ranks(sim: list[list[float]], t2v: list[int]) -> dict[int, int]:
    groups: dict[int, list[int]] = {}
    for c, v in enumerate(t2v):
        groups.setdefault(v, []).append(c)
    ranks = {}
    for j in sorted(groups):
        score = {g: max(sim[c][j] for c in caps) for g, caps in groups.items()}
        ranks[j] = 1 + sum(1 for g in groups if score[g] > score[j])
    return ranks


def naive_summary(ranks: list[int], prefix: str) -> dict[str, float]:
    n = len(ranks)
    out = {f"{prefix}/R@{k}": 100.0 * sum(r <= k for r in ranks) / n for k in (1, 5, 10)}
    out[f"{prefix}/MdR"] = float(statistics.median(ranks))
    out[f"{prefix}/MnR"] = sum(ranks) / n
    return out


def naive_metrics(sim, t2v, query_videos=None):
    keep = set(range(len(sim[0]))) if query_videos is None else set(query_videos)
    rows = [i for i in range(len(sim)) if t2v[i] in keep]
    t2v_ranks = naive_t2v_ranks([sim[i] for i in rows], [t2v[i] for i in rows])
    v2t = naive_v2t_ranks(sim, t2v)
    v2t_ranks = [r for j, r in v2t.items() if j in keep]
    return naive_summary(t2v_ranks, "t2v") | naive_summary(v2t_ranks, "v2t")


# ---------------------------------------------------------------- property tests


@st.composite
def scored_captions(draw, integer_scores: bool):
    num_videos = draw(st.integers(1, 7))
    num_texts = draw(st.integers(1, 14))
    t2v = draw(st.lists(st.integers(0, num_videos - 1), min_size=num_texts, max_size=num_texts))
    if integer_scores:
        # Few distinct values, so ties between the ground truth and other candidates are common.
        values = st.integers(-2, 2).map(float)
    else:
        values = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    sim = draw(
        st.lists(
            st.lists(values, min_size=num_videos, max_size=num_videos),
            min_size=num_texts,
            max_size=num_texts,
        )
    )
    return sim, t2v


def assert_metrics_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(scored_captions(True), scored_captions(False)))
def test_metrics_match_naive_loops(data):
    sim, t2v = data
    got = retrieval_metrics(torch.tensor(sim, dtype=torch.float32), torch.tensor(t2v))
    assert_metrics_close(got, naive_metrics(sim, t2v))


@settings(max_examples=100, deadline=None)
@given(data=scored_captions(True), seed=st.integers(0, 2**16))
def test_subset_queries_match_naive_loops(data, seed):
    sim, t2v = data
    rng = np.random.default_rng(seed)
    num_videos = len(sim[0])
    # A subset must contain at least one captioned video so that both directions have queries.
    subset = sorted(set(rng.choice(num_videos, size=rng.integers(1, num_videos + 1)).tolist()))
    subset = sorted(set(subset) | {t2v[0]})
    got = retrieval_metrics(np.array(sim), np.array(t2v), query_videos=subset)
    assert_metrics_close(got, naive_metrics(sim, t2v, subset))


@settings(max_examples=60, deadline=None)
@given(data=scored_captions(True), cut=st.integers(1, 13))
def test_group_scores_accumulate_over_blocks(data, cut):
    sim, t2v = data
    s, idx = torch.tensor(sim), torch.tensor(t2v)
    full = video_group_scores(s, idx)
    acc = video_group_scores(s[:cut], idx[:cut])
    if cut < len(sim):
        acc = video_group_scores(s[cut:], idx[cut:], out=acc)
    assert torch.equal(acc, full)
    # Per-block text->video ranks concatenate to the full ranks.
    blocks = [
        ranks_text_to_video(s[a : a + cut], idx[a : a + cut]) for a in range(0, len(sim), cut)
    ]
    assert torch.equal(torch.cat(blocks), ranks_text_to_video(s, idx))


# ---------------------------------------------------------------- hand-computed cases


def test_ties_favour_ground_truth():
    sim = torch.tensor(
        [
            [1.0, 1.0, 0.0],  # gt 0 tied with video 1 -> rank 1
            [2.0, 2.0, 2.0],  # gt 1 tied with everything -> rank 1
            [3.0, 5.0, 4.0],  # gt 2: only video 1 is strictly higher -> rank 2
        ]
    )
    t2v = torch.tensor([0, 1, 2])
    assert ranks_text_to_video(sim, t2v).tolist() == [1, 1, 2]
    m = retrieval_metrics(sim, t2v)
    assert m["t2v/R@1"] == pytest.approx(200 / 3)
    assert m["t2v/MdR"] == 1.0
    assert m["t2v/MnR"] == pytest.approx(4 / 3)
    # Video->text on sim.T: video 0 scores [1, 2, 3] -> rank 3; video 1 [1, 2, 5] -> 2;
    # video 2 [0, 2, 4] -> 1.
    ranks, videos = ranks_video_to_text(sim, t2v)
    assert videos.tolist() == [0, 1, 2]
    assert ranks.tolist() == [3, 2, 1]
    assert m["v2t/R@1"] == pytest.approx(100 / 3)
    assert m["v2t/R@5"] == 100.0
    assert m["v2t/MdR"] == 2.0
    assert m["v2t/MnR"] == 2.0


def test_multi_caption_groups_use_the_maximum():
    # Captions 0,1 describe video 0; caption 2 video 1; caption 3 video 2.
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.0],
            [0.8, 0.2, 0.3],
            [0.5, 0.6, 0.1],
            [0.7, 0.0, 0.4],
        ]
    )
    t2v = torch.tensor([0, 0, 1, 2])
    group = video_group_scores(sim, t2v)
    # [g, j]: group g against video j = max over g's captions of sim[c, j].
    expected = torch.tensor(
        [
            [0.8, 0.9, 0.3],
            [0.5, 0.6, 0.1],
            [0.7, 0.0, 0.4],
        ]
    )
    assert torch.allclose(group, expected)
    ranks, _ = ranks_video_to_text(sim, t2v)
    # video 0: own 0.8 is best -> 1; video 1: own 0.6 < 0.9 -> 2; video 2: own 0.4 best -> 1.
    assert ranks.tolist() == [1, 2, 1]
    # caption 0: 0.9 > 0.1 -> 2; caption 1 -> 1; caption 2 -> 1; caption 3: 0.7 > 0.4 -> 2.
    assert ranks_text_to_video(sim, t2v).tolist() == [2, 1, 1, 2]
    m = retrieval_metrics(sim, t2v)
    assert m["t2v/R@1"] == 50.0 and m["t2v/MdR"] == 1.5 and m["t2v/MnR"] == 1.5
    assert m["v2t/R@1"] == pytest.approx(200 / 3) and m["v2t/MnR"] == pytest.approx(4 / 3)


def test_single_caption_case_is_the_transpose():
    gen = torch.Generator().manual_seed(0)
    sim = torch.randn(9, 9, generator=gen)
    perm = torch.randperm(9, generator=gen)
    # One caption per video in shuffled order: v2t ranks equal ranking rows of the transpose.
    ranks, videos = ranks_video_to_text(sim, perm)
    inverse = perm.argsort()
    transposed = sim[inverse].T
    assert torch.equal(ranks, ranks_text_to_video(transposed, torch.arange(9)))
    assert videos.tolist() == list(range(9))


def test_captionless_videos_are_text_to_video_distractors_only():
    # Video 2 has no caption: it can outrank for t2v but is no v2t query or candidate.
    sim = torch.tensor([[0.5, 0.1, 0.9], [0.2, 0.6, 0.0]])
    t2v = torch.tensor([0, 1])
    assert ranks_text_to_video(sim, t2v).tolist() == [2, 1]
    ranks, videos = ranks_video_to_text(sim, t2v)
    assert videos.tolist() == [0, 1]
    assert ranks.tolist() == [1, 1]
    m = retrieval_metrics(sim, t2v)
    assert m["v2t/R@1"] == 100.0 and m["t2v/R@1"] == 50.0


def test_even_count_median_averages_the_middle_ranks():
    sim = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(sim, torch.tensor([0, 0]))
    assert m["t2v/MdR"] == 1.5


def test_invalid_inputs_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(torch.zeros(2), torch.tensor([0, 1]))
