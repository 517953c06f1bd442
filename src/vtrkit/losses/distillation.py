"""Similarity distillation (SD), CLIP2TV (SPEC §2): soft targets against false negatives.

Vague captions ("a shape moves") make many batch items true matches of one query while InfoNCE's
one-hot target calls all but one of them negatives. SD replaces the one-hot target by

    q = (1 - α) · onehot + α · softmax(S_teacher / τ_sd)

per row (text→video) and per column (video→text), and trains the student's logits with
cross-entropy against q. Cross-entropy is linear in its target, so the loss is computed as
``(1 - α) · InfoNCE + α · CE(student, teacher softmax)``: the same value, and with α = 0 it *is* the
plain symmetric InfoNCE to the last bit (no rounding from multiplying a one-hot matrix).

Shapes: B items of the gathered batch; S_teacher [B, B] is in cosine units (no λ).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtrkit.losses.contrastive import symmetric_infonce


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"model.clip2tv.sd_alpha must lie in [0, 1], got {alpha}")


def _check_square(name: str, matrix: Tensor) -> None:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square [B, B] matrix, got {tuple(matrix.shape)}")


def teacher_distributions(teacher_sim: Tensor, tau: float | Tensor) -> tuple[Tensor, Tensor]:
    """Row- and column-softmax of the teacher similarities.

    Args:
        teacher_sim: [B, B] teacher similarities (text i, video j), cosine units.
        tau: softmax temperature τ_sd (a float or a 0-d tensor; it is not differentiated).

    Returns:
        (p_t2v [B, B], p_v2t [B, B]): p_t2v[i] = softmax_j(S[i, j]/τ), p_v2t[j] = softmax_i(S[i, j]/τ);
        each row sums to 1.
    """
    scaled = teacher_sim.detach().float() / (tau.detach() if isinstance(tau, Tensor) else tau)
    return torch.softmax(scaled, dim=1), torch.softmax(scaled.t(), dim=1)


def soft_targets(teacher_sim: Tensor, alpha: float, tau: float | Tensor) -> tuple[Tensor, Tensor]:
    """The SD targets q for both directions.

    Args:
        teacher_sim: [B, B] teacher similarities (text i, video j), cosine units.
        alpha: weight α of the teacher distribution (0 gives the one-hot InfoNCE target).
        tau: teacher softmax temperature τ_sd.

    Returns:
        (q_t2v [B, B], q_v2t [B, B]) with q_t2v[i] the target over videos for text i and q_v2t[j]
        the target over texts for video j; rows sum to 1.
    """
    _check_alpha(alpha)
    _check_square("teacher_sim", teacher_sim)
    p_t2v, p_v2t = teacher_distributions(teacher_sim, tau)
    eye = torch.eye(teacher_sim.shape[0], dtype=p_t2v.dtype, device=p_t2v.device)
    return (1 - alpha) * eye + alpha * p_t2v, (1 - alpha) * eye + alpha * p_v2t


def _soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of -Σ_j target[i, j] · log_softmax(logits[i])_j; logits, target [B, B]."""
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def sd_loss(
    student_logits: Tensor, teacher_sim: Tensor, alpha: float, tau: float | Tensor
) -> Tensor:
    """Symmetric cross-entropy of the student's logits against the SD soft targets.

    Args:
        student_logits: [B, B] student vta logits (already multiplied by λ).
        teacher_sim: [B, B] teacher similarities in cosine units; no gradient flows into it.
        alpha: α ∈ [0, 1]; α = 0 returns exactly ``symmetric_infonce(student_logits)``.
        tau: teacher softmax temperature τ_sd.

    Returns:
        Scalar: (CE(S, q_t2v) + CE(Sᵀ, q_v2t)) / 2.
    """
    _check_alpha(alpha)
    _check_square("student_logits", student_logits)
    if teacher_sim.shape != student_logits.shape:
        raise ValueError(
            f"teacher_sim {tuple(teacher_sim.shape)} must match student_logits "
            f"{tuple(student_logits.shape)} (same gathered batch)"
        )
    hard = symmetric_infonce(student_logits)
    p_t2v, p_v2t = teacher_distributions(teacher_sim, tau)
    soft = (
        _soft_cross_entropy(student_logits, p_t2v) + _soft_cross_entropy(student_logits.t(), p_v2t)
    ) / 2
    return (1 - alpha) * hard + alpha * soft
