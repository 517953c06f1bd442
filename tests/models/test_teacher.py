"""SD teachers: EMA update arithmetic, frozen checkpoint loading, teacher similarities."""

from __future__ import annotations

import hashlib

import pytest
import torch

from vtrkit.config import BackboneConfig, ClipArch, Config, DataConfig, ModelConfig
from vtrkit.models.build import build_model
from vtrkit.train.checkpoint import save_checkpoint
from vtrkit.train.teacher import EmaTeacher, FrozenTeacher, load_frozen_teacher

NF, NW, S, D = 3, 8, 16, 32
ARCH = ClipArch(
    embed_dim=D,
    image_size=S,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=4,
    text_width=32,
    text_layers=2,
    text_heads=4,
)


def _config() -> Config:
    return Config(
        data=DataConfig(num_frames=NF, max_words=NW, image_size=S),
        model=ModelConfig(
            kind="seqTransf",
            temporal_layers=1,
            temporal_heads=4,
            backbone=BackboneConfig(arch=ARCH),
        ),
    )


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    cfg = _config()
    model, tokenizer = build_model(cfg.model, cfg.data)
    return cfg, model, tokenizer


def _batch(tokenizer, captions: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b = len(captions)
    ids, mask = tokenizer(captions, NW)
    video_mask = torch.ones(b, NF, dtype=torch.bool)
    video_mask[0, -1] = False
    return {
        "frames": torch.randn(b, NF, 3, S, S, generator=gen),
        "video_mask": video_mask,
        "input_ids": ids,
        "text_mask": mask,
    }


def _perturbed_copy(model, seed: int):
    import copy

    student = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return student


def test_ema_update_is_the_momentum_average(built):
    _, model, _ = built
    student = _perturbed_copy(model, 1)
    teacher = EmaTeacher(student, momentum=0.9)
    before = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    # The copy is independent: changing the student does not change the teacher.
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(-2.0).add_(0.3)
    for n, p in teacher.model.named_parameters():
        assert torch.equal(p, before[n])
    teacher.update(student)
    student_params = dict(student.named_parameters())
    for n, p in teacher.model.named_parameters():
        expected = 0.9 * before[n] + 0.1 * student_params[n].detach()
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, before[n]), n
    # Student parameters keep their gradients on; only the copy is frozen.
    assert all(p.requires_grad for p in student.parameters())


def test_ema_momentum_extremes_and_validation(built):
    _, model, _ = built
    student = _perturbed_copy(model, 2)
    frozen_forever = EmaTeacher(model, momentum=1.0)
    follower = EmaTeacher(model, momentum=0.0)
    frozen_forever.update(student)
    follower.update(student)
    for (n, p), q, r in zip(
        model.named_parameters(),
        frozen_forever.model.parameters(),
        follower.model.parameters(),
        strict=True,
    ):
        assert torch.equal(q, p.detach()), n
        assert torch.equal(r, dict(student.named_parameters())[n].detach()), n
    with pytest.raises(ValueError, match="ema_momentum"):
        EmaTeacher(model, momentum=1.5)


def test_teacher_similarity_is_cosine_of_the_copied_model(built):
    _, model, tokenizer = built
    teacher = EmaTeacher(model, 0.995)
    batch = _batch(tokenizer, ["a red circle moves left", "a shape moves", "a blue square grows"])
    sim = teacher.similarity(batch)
    with torch.no_grad():
        model.eval()
        text = model.encode_text(batch["input_ids"], batch["text_mask"])
        video = model.encode_video(batch["frames"], batch["video_mask"])
        expected = text.sentence @ video.video.T
    assert sim.shape == (3, 3) and not sim.requires_grad
    torch.testing.assert_close(sim, expected, rtol=1e-5, atol=1e-6)
    assert sim.abs().max() <= 1.0 + 1e-5


def test_frozen_teacher_loads_a_checkpoint_read_only(built, tmp_path):
    cfg, model, tokenizer = built
    trained = _perturbed_copy(model, 3)
    folder = save_checkpoint(tmp_path / "teacher", trained, cfg)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    teacher = load_frozen_teacher(folder)
    assert isinstance(teacher, FrozenTeacher)
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    for (n, p), q in zip(trained.named_parameters(), teacher.model.parameters(), strict=True):
        assert torch.equal(p.detach(), q), n
    batch = _batch(tokenizer, ["a green star shrinks", "a shape moves"], seed=4)
    with torch.no_grad():
        trained.eval()
        text = trained.encode_text(batch["input_ids"], batch["text_mask"])
        video = trained.encode_video(batch["frames"], batch["video_mask"])
        expected = text.sentence @ video.video.T
    torch.testing.assert_close(teacher.similarity(batch), expected, rtol=1e-5, atol=1e-6)
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == digest
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint"):
        load_frozen_teacher(tmp_path / "missing")
