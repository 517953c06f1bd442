"""Similarity distillation targets and loss (CLIP2TV SD)."""

from __future__ import annotations

import math

import pytest
import torch

from vtrkit.losses.contrastive import symmetric_infonce
from vtrkit.losses.distillation import sd_loss, soft_targets


def _naive_sd(student: list[list[float]], teacher: list[list[float]], alpha: float, tau: float):
    """Float64 loops straight from the SPEC formula: q = (1-α)·onehot + α·softmax(S_t/τ)."""
    n = len(student)

    def softmax(row):
        m = max(row)
        e = [math.exp(x - m) for x in row]
        return [x / sum(e) for x in e]

    def log_softmax(row):
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        return [x - lse for x in row]

    total = 0.0
    for direction in range(2):
        s = student if direction == 0 else [list(c) for c in zip(*student, strict=True)]
        t = teacher if direction == 0 else [list(c) for c in zip(*teacher, strict=True)]
        for i in range(n):
            p = softmax([x / tau for x in t[i]])
            q = [(1 - alpha) * (1.0 if j == i else 0.0) + alpha * p[j] for j in range(n)]
            ls = log_softmax(s[i])
            total -= sum(q[j] * ls[j] for j in range(n)) / n
    return total / 2


def test_alpha_zero_is_exactly_symmetric_infonce_value_and_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(7, 7) * 20).requires_grad_(True)
    teacher = torch.randn(7, 7)
    plain = symmetric_infonce(logits)
    (grad_plain,) = torch.autograd.grad(plain, logits)
    distilled = sd_loss(logits, teacher, alpha=0.0, tau=0.01)
    (grad_sd,) = torch.autograd.grad(distilled, logits)
    assert torch.equal(distilled, plain)
    assert torch.equal(grad_sd, grad_plain)


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_sd_loss_matches_the_naive_formula(alpha):
    torch.manual_seed(1)
    logits = torch.randn(5, 5) * 5
    teacher = torch.rand(5, 5) * 2 - 1
    tau = 0.05
    expected = _naive_sd(logits.double().tolist(), teacher.double().tolist(), alpha, tau)
    assert sd_loss(logits, teacher, alpha, tau).item() == pytest.approx(expected, rel=1e-5)
    # The default τ arrives as a tensor (1/λ of the student); same result.
    tau_tensor = torch.tensor(tau)
    assert sd_loss(logits, teacher, alpha, tau_tensor).item() == pytest.approx(expected, rel=1e-5)


def test_soft_targets_known_answer_and_both_directions():
    # Texts 0 and 1 are duplicates for the teacher: identical rows.
    teacher = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q_t2v, q_v2t = soft_targets(teacher, alpha=0.5, tau=1e-3)
    # τ → 0 makes the teacher softmax split mass evenly between the tied maxima.
    expected = torch.tensor([[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(q_t2v, expected)
    torch.testing.assert_close(q_v2t, expected)
    torch.manual_seed(2)
    teacher = torch.randn(4, 4)
    q_t2v, q_v2t = soft_targets(teacher, 0.3, 0.5)
    torch.testing.assert_close(q_t2v.sum(1), torch.ones(4))
    torch.testing.assert_close(q_v2t.sum(1), torch.ones(4))
    # Video→text targets are the text→video targets of the transposed matrix.
    swapped_t2v, swapped_v2t = soft_targets(teacher.t(), 0.3, 0.5)
    torch.testing.assert_close(q_v2t, swapped_t2v)
    torch.testing.assert_close(q_t2v, swapped_v2t)
    assert not torch.allclose(q_t2v, q_v2t)


def test_no_gradient_reaches_the_teacher_and_bad_inputs_are_named():
    teacher = torch.randn(3, 3, requires_grad=True)
    logits = torch.randn(3, 3, requires_grad=True)
    sd_loss(logits, teacher, 0.4, 0.1).backward()
    assert teacher.grad is None and logits.grad is not None
    with pytest.raises(ValueError, match="sd_alpha"):
        sd_loss(logits, teacher, 1.5, 0.1)
    with pytest.raises(ValueError, match="teacher_sim"):
        sd_loss(logits, torch.randn(4, 4), 0.4, 0.1)
