"""Hard-negative sampler and vtm loss of CLIP2TV."""

from __future__ import annotations

import math

import pytest
import torch

from vtrkit.losses.matching import (
    NO_NEGATIVE,
    matching_pairs,
    sample_hard_negatives,
    vtm_loss,
)

# Items 1 and 3 share a caption; item 4 is a second caption of video 0's clip in `video_key`.
CAPTION_KEY = torch.tensor([0, 1, 2, 1, 3])
VIDEO_KEY = torch.tensor([10, 11, 12, 13, 10])
SIM = torch.tensor(
    [
        [5.0, 1.0, -1.0, 0.5, 2.0],
        [0.3, 4.0, 1.5, -0.5, 0.0],
        [-2.0, 1.0, 3.0, 0.7, -0.3],
        [0.9, 0.2, -1.2, 2.5, 1.1],
        [1.4, -0.6, 0.4, 0.1, 3.3],
    ]
)


def _expected_row(scores: list[float], allowed: list[int]) -> dict[int, float]:
    """Naive softmax over the allowed entries of one row."""
    weights = {j: math.exp(scores[j]) for j in allowed}
    total = sum(weights.values())
    return {j: w / total for j, w in weights.items()}


def _allowed(query: int, keys: list[int], video: list[int] | None = None) -> list[int]:
    out = []
    for j in range(len(keys)):
        if j == query or keys[j] == keys[query]:
            continue
        if video is not None and video[j] == video[query]:
            continue
        out.append(j)
    return out


def _chi_square(counts: dict[int, int], probs: dict[int, float], n: int) -> float:
    return sum((counts.get(j, 0) - n * p) ** 2 / (n * p) for j, p in probs.items())


def _draw(n: int, video_key: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    draws = [sample_hard_negatives(SIM, CAPTION_KEY, gen, video_key) for _ in range(n)]
    return torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])


@pytest.mark.parametrize("use_video_key", [False, True])
def test_sampler_excludes_positives_and_duplicates_and_follows_softmax(use_video_key):
    n = 3000
    video_key = VIDEO_KEY if use_video_key else None
    neg_video, neg_text = _draw(n, video_key)
    keys = CAPTION_KEY.tolist()
    vids = VIDEO_KEY.tolist() if use_video_key else None
    # 0.999 quantiles of chi-square with 1..3 degrees of freedom.
    critical = {1: 10.83, 2: 13.82, 3: 16.27}
    for direction, draws, scores in (
        ("t2v", neg_video, SIM.tolist()),
        ("v2t", neg_text, SIM.t().tolist()),
    ):
        for q in range(len(keys)):
            allowed = _allowed(q, keys, vids)
            picked = draws[:, q].tolist()
            assert set(picked) <= set(allowed), f"{direction} query {q} drew a forbidden item"
            probs = _expected_row(scores[q], allowed)
            counts = {j: picked.count(j) for j in allowed}
            if len(allowed) == 1:
                assert counts[allowed[0]] == n
                continue
            stat = _chi_square(counts, probs, n)
            assert stat < critical[len(allowed) - 1], (direction, q, counts, probs)
            # The test has power: the same draws are far from uniform over the allowed items.
            uniform = {j: 1 / len(allowed) for j in allowed}
            assert _chi_square(counts, uniform, n) > 50


def test_sampler_marks_queries_without_any_negative():
    sim = torch.randn(3, 3)
    # All three captions identical: nothing may be drawn.
    neg_video, neg_text = sample_hard_negatives(sim, torch.tensor([7, 7, 7]))
    assert neg_video.tolist() == [NO_NEGATIVE] * 3
    assert neg_text.tolist() == [NO_NEGATIVE] * 3
    # Only item 2 differs: items 0 and 1 must take it, item 2 may take 0 or 1.
    neg_video, neg_text = sample_hard_negatives(sim, torch.tensor([7, 7, 8]))
    assert neg_video[:2].tolist() == [2, 2] and neg_text[:2].tolist() == [2, 2]
    assert neg_video[2].item() in (0, 1) and neg_text[2].item() in (0, 1)


def test_sampler_is_reproducible_with_a_seed_and_checks_shapes():
    sim = torch.randn(8, 8)
    key = torch.arange(8)
    a = sample_hard_negatives(sim, key, torch.Generator().manual_seed(5))
    b = sample_hard_negatives(sim, key, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="square"):
        sample_hard_negatives(torch.randn(3, 4), torch.arange(3))
    with pytest.raises(ValueError, match="caption_key"):
        sample_hard_negatives(torch.randn(3, 3), torch.arange(4))


def test_matching_pairs_lists_positives_then_negatives_and_skips_missing():
    neg_v = torch.tensor([2, NO_NEGATIVE, 0])
    neg_t = torch.tensor([1, 2, NO_NEGATIVE])
    text, video, label = matching_pairs(neg_v, neg_t)
    pairs = list(zip(text.tolist(), video.tolist(), label.tolist(), strict=True))
    assert pairs == [
        (0, 0, 1),
        (1, 1, 1),
        (2, 2, 1),
        (0, 2, 0),  # text 0 with its negative video 2
        (2, 0, 0),  # text 2 with its negative video 0
        (1, 0, 0),  # video 0 with its negative text 1
        (2, 1, 0),  # video 1 with its negative text 2
    ]
    # A process owning items [1, 2] builds only their pairs (indices stay global).
    text, video, label = matching_pairs(neg_v, neg_t, rows=torch.tensor([1, 2]))
    assert list(zip(text.tolist(), video.tolist(), label.tolist(), strict=True)) == [
        (1, 1, 1),
        (2, 2, 1),
        (2, 0, 0),
        (2, 1, 0),
    ]


def test_vtm_loss_is_mean_cross_entropy_over_pairs():
    logits = torch.tensor([[0.2, 1.5], [2.0, -1.0], [0.3, 0.1]])
    label = torch.tensor([1, 0, 0])
    expected = 0.0
    for row, y in zip(logits.tolist(), label.tolist(), strict=True):
        expected -= row[y] - math.log(math.exp(row[0]) + math.exp(row[1]))
    assert vtm_loss(logits, label).item() == pytest.approx(expected / 3, rel=1e-6)
