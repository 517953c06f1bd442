"""CLIP2TV's SD α ramp (SPEC §6): α = sd_alpha · min(1, step / steps_per_epoch), or constant."""

from __future__ import annotations

import logging

import pytest
import torch

from vtrkit.config import (
    BackboneConfig,
    Clip2TVConfig,
    ClipArch,
    Config,
    DataConfig,
    ModelConfig,
    load_config,
)
from vtrkit.data.synthetic import generate
from vtrkit.losses.contrastive import symmetric_infonce
from vtrkit.models.build import build_model
from vtrkit.train import pipeline
from vtrkit.train.clip2tv_objective import Clip2TVObjective
from vtrkit.train.teacher import FrozenTeacher

NF, NW, S, D = 3, 8, 16, 16
ARCH = ClipArch(
    embed_dim=D,
    image_size=S,
    patch_size=8,
    vision_width=16,
    vision_layers=1,
    vision_heads=2,
    text_width=16,
    text_layers=1,
    text_heads=2,
    context_length=NW,
)
CAPTIONS = ["a red circle moves left", "a shape moves", "a blue square grows", "a cross appears"]


def _config(**clip2tv) -> Config:
    return Config(
        data=DataConfig(num_frames=NF, max_words=NW, image_size=S),
        model=ModelConfig(
            kind="clip2tv",
            temporal_layers=1,
            temporal_heads=2,
            backbone=BackboneConfig(arch=ARCH),
            clip2tv=Clip2TVConfig(vtm=False, **clip2tv),
        ),
    )


@pytest.fixture(scope="module")
def parts():
    """A tiny CLIP2TV student, a frozen teacher of other weights, and a batch."""
    cfg = _config()
    torch.manual_seed(0)
    student, tokenizer = build_model(cfg.model, cfg.data)
    torch.manual_seed(1)
    other, _ = build_model(cfg.model, cfg.data)
    ids, mask = tokenizer(CAPTIONS, NW)
    gen = torch.Generator().manual_seed(2)
    batch = {
        "frames": torch.randn(len(CAPTIONS), NF, 3, S, S, generator=gen),
        "video_mask": torch.ones(len(CAPTIONS), NF, dtype=torch.bool),
        "input_ids": ids,
        "text_mask": mask,
        "caption_key": torch.arange(len(CAPTIONS)),
    }
    return student, FrozenTeacher(other.vta), batch


def _reference(logits: torch.Tensor, teacher_sim: torch.Tensor, alpha: float, tau: float):
    """The SD loss computed from its definition with explicit soft-target vectors."""
    b = logits.shape[0]
    student, teacher = logits.double(), teacher_sim.double()
    total = torch.zeros((), dtype=torch.float64)
    for s_mat, t_mat in ((student, teacher), (student.t(), teacher.t())):
        for i in range(b):
            q = alpha * torch.softmax(t_mat[i] / tau, 0)
            q[i] += 1 - alpha
            total = total - (q * torch.log_softmax(s_mat[i], 0)).sum()
    return total / (2 * b)


def test_epoch_ramp_alpha_values_and_losses(parts):
    student, teacher, batch = parts
    cfg = _config(sd=True, sd_alpha=0.5, sd_alpha_ramp="epoch").model.clip2tv
    objective = Clip2TVObjective(cfg, teacher=teacher, steps_per_epoch=4)
    student.eval()  # no dropout: the same logits at every step
    tau = float(1.0 / student.logit_scale.detach().exp())
    teacher_sim = teacher.similarity(batch)
    seen = []
    with torch.no_grad():
        for step in range(7):
            assert objective.step == step
            out = objective(student, batch)
            seen.append(objective.alpha)
            expected = _reference(out["logits"], teacher_sim, objective.alpha, tau)
            torch.testing.assert_close(out["loss_sd"].double(), expected, rtol=1e-5, atol=1e-6)
            assert torch.equal(out["loss"], out["loss_sd"])
            if step == 0:  # α = 0: plain InfoNCE to the bit
                assert torch.equal(out["loss_sd"], symmetric_infonce(out["logits"]))
            objective.after_step(student)
    # 0.5 · s / 4 is exact in binary: the ramp's values, then sd_alpha for the rest of training.
    assert seen == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5]


def test_constant_alpha_and_resumed_start(parts):
    student, teacher, batch = parts
    constant = Clip2TVObjective(
        _config(sd=True, sd_alpha=0.5, sd_alpha_ramp="none").model.clip2tv,
        teacher=teacher,
        steps_per_epoch=4,
    )
    assert constant.alpha == 0.5
    student.eval()
    with torch.no_grad():
        out = constant(student, batch)
    assert out["loss_sd"].item() != pytest.approx(out["loss_vta"].item())
    resumed = Clip2TVObjective(
        _config(sd=True, sd_alpha=0.5).model.clip2tv,
        teacher=teacher,
        steps_per_epoch=4,
        start_step=3,
    )
    assert resumed.alpha == 0.375
    resumed.after_step(student)
    assert resumed.alpha == 0.5


def test_ramp_without_epoch_length_warns_and_keeps_alpha(caplog):
    with caplog.at_level(logging.WARNING, logger="vtrkit.train.clip2tv_objective"):
        objective = Clip2TVObjective(_config(sd=True, sd_alpha=0.4).model.clip2tv)
    assert objective.alpha == 0.4
    assert "steps_per_epoch" in caplog.text
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Clip2TVObjective(_config(sd=True).model.clip2tv, steps_per_epoch=0)


def test_train_run_places_the_ramp_and_resumes_its_count(tmp_path, monkeypatch):
    """8 training videos at batch 2: 4 steps per epoch. Two steps, then a resumed run to step 4:
    the α of each step continues where the first run stopped."""
    root = tmp_path / "synthetic"
    generate(root, n_train=8, n_test=4, n_long=0, seed=2, workers=1)
    seen: list[float] = []
    original = Clip2TVObjective.__call__

    def recording(self, model, batch):
        seen.append(self.alpha)
        return original(self, model, batch)

    monkeypatch.setattr(Clip2TVObjective, "__call__", recording)
    base = [
        "model.kind=clip2tv",
        "model.temporal_layers=1",
        "model.temporal_heads=2",
        "model.clip2tv.vtm=false",
        "model.clip2tv.sd=true",
        "model.clip2tv.sd_alpha=0.5",
        "data.num_frames=3",
        "data.max_words=12",
        "data.image_size=16",
        "data.num_workers=0",
        "model.backbone.arch={embed_dim: 16, image_size: 16, patch_size: 8, vision_width: 16, "
        "vision_layers: 1, vision_heads: 2, text_width: 16, text_layers: 1, text_heads: 2}",
        f"data.root={root}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.batch_size=2",
        "train.epochs=2",
    ]
    first = pipeline.train_run(
        load_config(None, [*base, "train.max_steps=2"]), device="cpu", progress=False
    )
    assert first.steps == 2 and pipeline.resumed_step(tmp_path / "run") == 2
    cfg = load_config(None, [*base, "train.max_steps=5"])
    second = pipeline.train_run(cfg, resume=True, device="cpu", progress=False)
    assert second.steps == 5
    assert seen == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert pipeline.resumed_step(tmp_path / "nothing") == 0
