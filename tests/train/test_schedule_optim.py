import math

import pytest
import torch
from torch import nn

from vtrkit.config import OptimConfig
from vtrkit.train.optim import build_optimizer
from vtrkit.train.schedule import warmup_cosine


def test_warmup_then_cosine_known_values():
    total, warm = 100, 0.1
    assert warmup_cosine(0, total, warm) == pytest.approx(0.1)
    assert warmup_cosine(9, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(10, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(55, total, warm) == pytest.approx(0.5)
    assert warmup_cosine(100, total, warm) == pytest.approx(0.0, abs=1e-12)
    mid = 10 + 90 * 0.25
    assert warmup_cosine(int(mid), total, warm) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 90))
    )


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower = nn.Linear(4, 4)
        self.tower_norm = nn.LayerNorm(4)
        self.token_embedding = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 4)
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    def param_groups(self):
        backbone = [
            *self.tower.parameters(),
            *self.tower_norm.parameters(),
            *self.token_embedding.parameters(),
            self.logit_scale,
        ]
        return backbone, list(self.head.parameters())


def test_param_groups_learning_rates_and_decay_exclusions():
    model = _Toy()
    opt = build_optimizer(model, OptimConfig(lr_backbone=1e-7, lr_new=1e-4, weight_decay=0.2))
    by_name = {g["name"]: g for g in opt.param_groups}
    ids = {name: {id(p) for p in g["params"]} for name, g in by_name.items()}
    assert ids["backbone/decay"] == {id(model.tower.weight)}
    assert ids["backbone/no_decay"] == {
        id(model.tower.bias),
        id(model.tower_norm.weight),
        id(model.tower_norm.bias),
        id(model.token_embedding.weight),
        id(model.logit_scale),
    }
    assert ids["new/decay"] == {id(model.head.weight)}
    assert ids["new/no_decay"] == {id(model.head.bias)}
    assert by_name["backbone/decay"]["lr"] == 1e-7 and by_name["new/decay"]["lr"] == 1e-4
    assert by_name["new/no_decay"]["weight_decay"] == 0.0
    assert by_name["new/decay"]["weight_decay"] == 0.2
