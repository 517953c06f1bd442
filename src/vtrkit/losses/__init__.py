"""Training losses: contrastive InfoNCE with gathered features (matching and distillation live in
their own modules)."""

from vtrkit.losses.contrastive import gather_with_grad, is_distributed, symmetric_infonce

__all__ = ["gather_with_grad", "is_distributed", "symmetric_infonce"]
