"""Optimiser of SPEC §0: Adam with decoupled weight decay and two learning rates."""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW

from vtrkit.config import OptimConfig

_NO_DECAY_MARKERS = ("bias", "norm", "embedding", "logit_scale", "class_embedding", "ln_")


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """True for biases, normalisation weights, embeddings and logit_scale (excluded from decay).

    Name markers catch embeddings stored as 2-D tables; the ndim test catches any remaining
    vectors (biases and norm gains under unusual names).
    """
    lowered = name.lower()
    return param.ndim < 2 or any(marker in lowered for marker in _NO_DECAY_MARKERS)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> AdamW:
    """AdamW over four groups: {backbone, new} × {decay, no decay}.

    The model's ``param_groups()`` says which parameters belong to the pretrained CLIP towers
    (trained at ``lr_backbone``, with logit_scale) and which are new (``lr_new``).
    """
    backbone, new = model.param_groups()
    backbone_ids = {id(p) for p in backbone}
    new_ids = {id(p) for p in new}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {
        ("backbone", True): [],
        ("backbone", False): [],
        ("new", True): [],
        ("new", False): [],
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in backbone_ids:
            part = "backbone"
        elif id(param) in new_ids:
            part = "new"
        else:
            raise ValueError(f"parameter {name!r} is in neither of the model's param_groups()")
        groups[(part, not is_no_decay(name, param))].append(param)
    lrs = {"backbone": cfg.lr_backbone, "new": cfg.lr_new}
    param_groups = [
        {
            "params": params,
            "lr": lrs[part],
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{part}/{'decay' if decay else 'no_decay'}",
        }
        for (part, decay), params in groups.items()
        if params
    ]
    return AdamW(param_groups, betas=cfg.betas, eps=cfg.eps)
