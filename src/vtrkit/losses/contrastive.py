"""Symmetric InfoNCE over the global batch, with features gathered across processes (SPEC §0).

Gradient scaling under DDP, and why no extra factor is needed:

every process gathers the features of the whole global batch (B = world × b rows) and computes the
*same* loss L on the same B×B logit matrix. ``torch.distributed.nn.functional.all_gather`` is
differentiable and its backward *sums* the incoming gradients of each rank's slice over all ranks,
so the local features of rank r receive Σ_ranks ∂L/∂x_r = world · ∂L/∂x_r. Parameters used before
the gather (the encoders) therefore hold world × (their share of ∂L/∂θ) on rank r, and DDP's gradient
*average* turns Σ_r world · g_r / world into Σ_r g_r = ∂L/∂θ, the single-process gradient on the
concatenated batch. Parameters used after the gather (logit_scale, a similarity head) see the full
∂L/∂θ on every rank, and averaging identical values leaves it unchanged. Hence: compute the plain
mean loss on the gathered matrix, no rescaling, and let DDP average (``tests/losses/
test_distributed_loss.py`` checks loss and every gradient against the single-process run).
A trainer that all-reduces gradients by hand must likewise *average*, not sum.

All processes must hold per-rank batches of identical shapes (the loader drops the last partial
batch), as ``all_gather`` requires.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward passes on a contiguous gradient.

    The gloo path of ``all_gather``'s backward allocates its receive buffers with
    ``empty_like(grad)``, which keeps the strides of a permuted gradient (e.g. one coming back
    through a ``transpose(...).contiguous()``), while the collective fills them as if contiguous:
    the gathered gradient would be silently scrambled (gloo ``scatter`` on non-contiguous tensors,
    pytorch/pytorch#192920; caught by ``tests/losses/test_distributed_loss.py``). Slices along
    dim 0 of a contiguous gradient are contiguous, so this keeps every rank's part well-formed.
    """

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


def symmetric_infonce(logits: Tensor) -> Tensor:
    """(CE(S, diag) + CE(Sᵀ, diag)) / 2 for a square logit matrix S [B, B] (λ already applied).

    Row i's positive is column i; returns a scalar averaged over the B rows of each direction.
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(
            f"symmetric_infonce needs a square [B, B] matrix, got {tuple(logits.shape)}"
        )
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [b, ...] from every process in rank order -> [world × b, ...].

    Gradients flow back to the owning process (summed over ranks, see the module docstring).
    Tensors that do not require grad (masks, evaluation) use a plain all_gather; bool tensors
    travel as uint8 because gloo has no bool collectives. Identity when not distributed.
    """
    if not is_distributed():
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():
            # Deprecated in torch 2.13 but still exact; its summed backward is what the
            # scaling argument in the module docstring relies on.
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            parts = all_gather(x.contiguous())
        return _ContiguousGrad.apply(torch.cat(parts, dim=0))
    is_bool = x.dtype == torch.bool
    src = (x.to(torch.uint8) if is_bool else x).contiguous()
    parts = [torch.empty_like(src) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, src)
    out = torch.cat(parts, dim=0)
    return out.bool() if is_bool else out


def contrastive_loss(logits: Tensor, text_to_video_only: bool = False) -> Tensor:
    """InfoNCE with temperature 1 on [B, B] logits whose diagonal holds the positives.

    Symmetric (mean of text→video and video→text cross-entropy) unless ``text_to_video_only``.
    """
    if not text_to_video_only:
        return symmetric_infonce(logits)
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
