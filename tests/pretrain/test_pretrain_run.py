"""``vtrkit pretrain`` end to end on the one training loop, and its exact resume: a run killed
mid-epoch and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from pretrain_helpers import tiny_config
from safetensors.torch import load_file
from typer.testing import CliRunner

from vtrkit.config import Config
from vtrkit.distributed import DistInfo
from vtrkit.models.clip_pretrain import build_pretrain_model
from vtrkit.train.loop import fit, seed_everything
from vtrkit.train.pretrain_objective import ImageTextObjective
from vtrkit.train.pretrain_source import PretrainSource

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Killed(Exception):
    """Stands for the process being killed."""


class DyingSource(PretrainSource):
    """Raises when asked for micro-batch number ``die_at`` of the run (counted from 0)."""

    die_at = 4

    def __iter__(self):
        for batch in super().__iter__():
            done = self.epoch * self.micro_per_epoch + self.consumed
            if done > self.die_at:
                raise Killed
            yield batch


def train(cfg: Config, source_cls=PretrainSource, resume: bool = False) -> dict[str, torch.Tensor]:
    seed_everything(cfg.train.seed)
    model, tokenizer = build_pretrain_model(cfg.model.backbone)
    source = source_cls(cfg, tokenizer, 32, CPU)
    fit(cfg, model, source, ImageTextObjective(), CPU, resume=resume, progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    whole = train(tiny_config(tmp_path / "whole"))
    cfg = tiny_config(tmp_path / "split", train={"checkpoint_every": 1})
    with pytest.raises(Killed):
        train(cfg, DyingSource)  # dies in epoch 2 (3 steps per epoch) after 4 steps
    state = torch.load(tmp_path / "split" / "last" / "state.pt", weights_only=False)
    assert state["train_state"]["step"] == 4 and state["train_state"]["batch_in_epoch"] == 1
    resumed = train(cfg, resume=True)
    assert whole.keys() == resumed.keys()
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key
    initial = build_pretrain_model(cfg.model.backbone)[0].state_dict()
    assert not torch.equal(
        initial["towers.model.visual_projection.weight"],
        whole["towers.model.visual_projection.weight"],
    )
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_cli_pretrains_exports_and_checks(tmp_path: Path) -> None:
    from vtrkit.cli import _register_all, app
    from vtrkit.data.synthetic import generate

    generate(tmp_path / "bench", n_train=0, n_test=8, n_long=0, seed=2, workers=1)
    cfg = tiny_config(tmp_path / "run", data={"root": str(tmp_path / "bench")})
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    _register_all()
    runner = CliRunner()
    args = ["pretrain", str(config), "--set", "pretrain.zero_shot_video=true", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "linear probes" in result.output and "zero-shot CLIP" in result.output
    assert "backbone.yaml" in result.output
    run = tmp_path / "run"
    checks = json.loads((run / "pretrain_checks.json").read_text())
    assert checks["steps"] == checks["total_steps"] == 6
    assert set(checks) >= {"zero_shot", "probes", "zero_shot_video", "heldout", "init"}
    assert set(checks["init"]["probes"]) == set(checks["probes"])
    assert checks["init"]["probes"] != checks["probes"]  # the trained weights differ from init
    assert "t2v/R@1" in checks["zero_shot_video"]["raw"]
    # The exported file holds the trained weights (the run's last checkpoint).
    last = load_file(str(run / "last" / "model.safetensors"))
    sd = torch.load(run / "clip.pt", weights_only=True)
    assert torch.equal(sd["visual.proj"], last["towers.model.visual_projection.weight"].T)
    assert torch.equal(sd["logit_scale"], last["towers.model.logit_scale"])
    # Resuming a finished run trains no further and exports the same weights again.
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert torch.equal(
        torch.load(run / "clip.pt", weights_only=True)["visual.proj"], sd["visual.proj"]
    )
    assert json.loads((run / "pretrain_checks.json").read_text())["probes"] == checks["probes"]
