"""The exported backbone loads into every recipe with the pretrained weights (equal features), and
the checks compute what they claim: retrieval ranks, probe accuracy against chance, and the
zero-shot video row equal to evaluating mean pooling over the pretrained towers directly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretrain_helpers import tiny_config

from vtrkit.backbones.checkpoints import CheckpointFormat, detect_format
from vtrkit.backbones.tokenizer import load_tokenizer
from vtrkit.config import ModelConfig
from vtrkit.eval.pretrain_checks import (
    format_checks,
    image_text_retrieval,
    probe_accuracy,
    run_checks,
    zero_shot_video,
)
from vtrkit.models.build import build_model
from vtrkit.models.clip_pretrain import ClipPretrainModel, build_pretrain_model
from vtrkit.train.pretrain_pipeline import export_backbone, read_backbone

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[ClipPretrainModel, Path]:
    """A tiny pretraining model moved off its initialisation, exported into a run folder."""
    run = tmp_path_factory.mktemp("pretrain")
    cfg = tiny_config(run)
    torch.manual_seed(3)
    model, _ = build_pretrain_model(cfg.model.backbone)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_backbone(model, cfg, run)
    return model.eval(), run


@pytest.mark.parametrize("kind", ["meanP", "seqTransf", "xclip", "clip2tv"])
def test_recipes_load_the_pretrained_towers(exported, kind: str) -> None:
    model, run = exported
    backbone = read_backbone(run)
    assert detect_format(backbone.checkpoint).format is CheckpointFormat.TORCH_STATE_DICT
    cfg = tiny_config(run)
    finetune, tokenizer = build_model(
        ModelConfig(kind=kind, backbone=backbone, temporal_heads=4), cfg.data
    )
    towers = finetune.towers if hasattr(finetune, "towers") else finetune.vta.towers
    torch.manual_seed(0)
    pixels = torch.randn(5, 3, 32, 32)
    texts = ["a small red circle at the top left", "two shapes: a big blue cross and a cyan square"]
    ids, mask = tokenizer(texts, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            towers.encode_image(pixels), model.towers.encode_image(pixels), rtol=0, atol=1e-6
        )
        for got, want in zip(
            towers.encode_text(ids, mask), model.towers.encode_text(ids, mask), strict=True
        ):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert float(towers.logit_scale.detach()) == float(model.logit_scale.detach())


def test_export_is_an_openai_state_dict_with_its_tokenizer(exported) -> None:
    model, run = exported
    sd = torch.load(run / "clip.pt", weights_only=True)
    assert {"visual.conv1.weight", "visual.proj", "text_projection", "logit_scale"} <= set(sd)
    assert "transformer.resblocks.0.attn.in_proj_weight" in sd
    assert not any(k.startswith(("vision_model.", "text_model.")) for k in sd)
    torch.testing.assert_close(sd["visual.proj"], model.towers.model.visual_projection.weight.T)
    backbone = read_backbone(run)
    assert (backbone.vision_heads, backbone.text_heads) == (4, 4)
    assert backbone.tokenizer.parent == run and (run / "LICENSE-CLIP.txt").is_file()
    texts = ["three objects: a little green triangle in the upper right"]
    trained_with = build_pretrain_model(tiny_config(run).model.backbone)[1]
    for a, b in zip(
        load_tokenizer(backbone.tokenizer)(texts, 24), trained_with(texts, 24), strict=True
    ):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="vtrkit pretrain"):
        read_backbone(run / "nothing")


def naive_ranks(sim: torch.Tensor) -> list[int]:
    return [
        1 + sum(float(sim[i, j]) > float(sim[i, i]) for j in range(len(sim)))
        for i in range(len(sim))
    ]


def test_image_text_retrieval_ranks() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(image + 0.9 * torch.randn(12, 8, generator=g), dim=-1)
    out = image_text_retrieval(text, image)
    t2i, i2t = naive_ranks(text @ image.T), naive_ranks(image @ text.T)
    assert out["t2i/R@1"] == pytest.approx(100 * sum(r == 1 for r in t2i) / 12)
    assert out["i2t/R@5"] == pytest.approx(100 * sum(r <= 5 for r in i2t) / 12)
    assert out["t2i/MnR"] == pytest.approx(sum(t2i) / 12)
    assert 0 < out["t2i/R@1"] < 100
    assert image_text_retrieval(image, image)["i2t/R@1"] == 100.0


def test_probe_accuracy_against_chance() -> None:
    g = torch.Generator().manual_seed(0)
    y_train, y_test = (
        torch.randint(0, 4, (300,), generator=g),
        torch.randint(0, 4, (200,), generator=g),
    )
    centres = 2.0 * torch.randn(4, 16, generator=g)

    def features(y: torch.Tensor) -> torch.Tensor:
        return centres[y] + 0.3 * torch.randn(len(y), 16, generator=g)

    decodable = probe_accuracy(features(y_train), y_train, features(y_test), y_test, 4)
    assert decodable["accuracy"] == 100.0
    assert decodable["chance"] == pytest.approx(100 * torch.bincount(y_test).max().item() / 200)
    noise = probe_accuracy(
        torch.randn(300, 16, generator=g), y_train, torch.randn(200, 16, generator=g), y_test, 4
    )
    assert abs(noise["accuracy"] - 25) < 12


class ColourOnly(torch.nn.Module):
    """Sees only which colours an image shows and which colour words a caption says: blind to
    shape, size and position by construction."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        from vtrkit.data.synthetic_scene import COLOURS
        from vtrkit.data.transforms import CLIP_MEAN, CLIP_STD

        self.rgb = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # [6, 3]
        self.mean, self.std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        self.words = {tokenizer.encode(c)[0]: i for i, c in enumerate(COLOURS)}

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = (pixels * self.std[:, None, None] + self.mean[:, None, None]) * 255  # [N, 3, S, S]
        dist = (rgb.permute(0, 2, 3, 1)[:, :, :, None, :] - self.rgb).norm(dim=-1)
        shown = (dist < 40).flatten(1, 2).any(1).float()  # [N, 6]
        return torch.nn.functional.normalize(shown + 1e-3, dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        said = torch.zeros(len(ids), len(self.words))
        for row, tokens in enumerate(ids.tolist()):
            for token in tokens:
                if token in self.words:
                    said[row, self.words[token]] = 1.0
        return torch.nn.functional.normalize(said + 1e-3, dim=-1)


def test_twin_check_shows_what_a_model_ignores(exported) -> None:
    from vtrkit.data.synthetic_stills import StillStream
    from vtrkit.eval.pretrain_checks import twin_checks

    _, run = exported
    tokenizer = build_pretrain_model(tiny_config(run).model.backbone)[1]
    blind = ColourOnly(tokenizer)
    out = twin_checks(blind, tokenizer, StillStream(seed=0), 30, 40, 32, 64, CPU)
    for attribute in ("shape", "size", "position"):
        # Identical features for a pair give equal scores: never strictly preferred.
        assert out[attribute] == {"t2i": 0.0, "i2t": 0.0}, attribute
    assert out["colour"]["t2i"] > 90 and out["colour"]["i2t"] > 90


def test_run_checks_reports_every_check(exported) -> None:
    model, run = exported
    cfg = tiny_config(run)
    _, tokenizer = build_pretrain_model(cfg.model.backbone)
    checks = run_checks(model, tokenizer, cfg, 32, CPU)
    assert checks["zero_shot"]["images"] == 24 and len(checks["heldout"]) == 24
    assert set(checks["probes"]) == {"colour", "shape", "position", "size"}
    assert set(checks["twins"]) == {"colour", "shape", "position", "size"}
    for r in checks["probes"].values():
        assert 0 <= r["accuracy"] <= 100 and 0 < r["chance"] <= 100
    text = format_checks(checks)
    assert "held-out compositions" in text and "position" in text


def test_zero_shot_video_row_is_mean_pooling_over_the_pretrained_towers(exported, tmp_path) -> None:
    from vtrkit.data.datasets import read_dataset
    from vtrkit.data.synthetic import generate
    from vtrkit.eval.evaluate import evaluate, load_subsets
    from vtrkit.models.meanpool import Clip4Clip

    model, run = exported
    generate(tmp_path / "bench", n_train=0, n_test=8, n_long=0, seed=2, workers=1)
    cfg = tiny_config(run, data={"root": str(tmp_path / "bench")})
    row = zero_shot_video(read_backbone(run), cfg, CPU)
    direct = evaluate(
        Clip4Clip(model.towers),
        read_dataset(cfg.data, "test"),
        build_pretrain_model(cfg.model.backbone)[1],
        cfg.data,
        cfg.eval,
        CPU,
        subsets=load_subsets(tmp_path / "bench" / "subsets.json"),
    )
    assert row["raw"] == pytest.approx(direct["raw"], abs=1e-9)
    assert set(row["subsets"]) == {"order", "attribute"}
