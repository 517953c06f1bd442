"""Symmetric InfoNCE against a naive per-row computation; gathering without a process group."""

from __future__ import annotations

import math

import pytest
import torch

from vtrkit.losses.contrastive import gather_with_grad, is_distributed, symmetric_infonce


def naive_infonce(s: torch.Tensor) -> float:
    """Mean over rows of -log softmax(row)[i] and over columns likewise, halved."""
    b = s.shape[0]
    rows = cols = 0.0
    for i in range(b):
        rows += -s[i, i].item() + math.log(sum(math.exp(s[i, j].item()) for j in range(b)))
        cols += -s[i, i].item() + math.log(sum(math.exp(s[j, i].item()) for j in range(b)))
    return (rows / b + cols / b) / 2


def test_symmetric_infonce_matches_naive_loops() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 10 * torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert symmetric_infonce(logits).item() == pytest.approx(naive_infonce(logits), rel=1e-12)


def test_symmetric_infonce_is_asymmetric_aware() -> None:
    # A matrix whose rows and columns disagree: both directions must count.
    logits = torch.tensor([[5.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    rows = torch.nn.functional.cross_entropy(logits, torch.arange(2)).item()
    cols = torch.nn.functional.cross_entropy(logits.T, torch.arange(2)).item()
    assert rows != pytest.approx(cols)
    assert symmetric_infonce(logits).item() == pytest.approx((rows + cols) / 2)


def test_symmetric_infonce_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        symmetric_infonce(torch.zeros(2, 3))


def test_gather_is_identity_without_a_process_group() -> None:
    assert not is_distributed()
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
