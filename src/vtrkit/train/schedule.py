"""Learning-rate schedule of SPEC §0: linear warm-up, then cosine decay over the whole run."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    Rises linearly from 1/warmup to 1 over the first ``warmup_fraction`` of the run, then follows
    half a cosine from 1 down to 0 at ``total_steps``.
    """
    warmup = round(warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, total_steps: int, warmup_fraction: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_fraction))
