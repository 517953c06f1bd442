"""Optimiser of SPEC §0: Adam with decoupled weight decay and two learning rates."""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW

from vtrkit.config import OptimConfig


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) that get no weight decay (SPEC §0).

    Biases, norm weights, embeddings (``nn.Embedding`` tables and parameters whose name contains
    ``embedding``, e.g. CLIP's class and position embeddings) and ``logit_scale``. Any parameter
    with fewer than two dimensions (biases, norm gains, scalars) is included, which catches norm
    layers whatever their class.
    """
    names: set[str] = set()
    for module_name, module in model.named_modules():
        is_table = isinstance(module, (nn.Embedding, nn.LayerNorm, nn.GroupNorm))
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if (
                is_table
                or param.dim() < 2
                or "embedding" in param_name
                or "logit_scale" in param_name
            ):
                names.add(full)
    kept = {name for name, _ in model.named_parameters()}
    return names & kept


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
    no_decay = no_decay_parameter_names(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in backbone_ids:
            part = "backbone"
        elif id(param) in new_ids:
            part = "new"
        else:
            raise ValueError(f"parameter {name!r} is in neither of the model's param_groups()")
        groups[(part, name not in no_decay)].append(param)
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
    # The fused kernel is ~70x faster than the default per-tensor loop on CPU (measured: 37 ms
    # vs 2.8 s per step for a 7.6M-parameter model whose token table dominates).
    params = [p for group in param_groups for p in group["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return AdamW(param_groups, betas=cfg.betas, eps=cfg.eps, fused=fused)
