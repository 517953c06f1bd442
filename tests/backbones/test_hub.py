"""Backbone names through the local Hugging Face cache, which each test populates itself.

No test touches the network: huggingface_hub's download functions are replaced by ones that fail
the test (or, where a download is the expected outcome, by a fake that writes the cache).
"""

from __future__ import annotations

import math
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import CLIPModel

import vtrkit
from vtrkit.backbones import hub
from vtrkit.backbones.clip import build_clip
from vtrkit.backbones.convert import CheckpointError, clip_config
from vtrkit.config import BackboneConfig, ClipArch

torch.set_num_threads(1)
ARCH = ClipArch(
    embed_dim=32,
    image_size=16,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
)
REPO = "openai/clip-vit-base-patch32"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(clip_config(ARCH)).eval()


def populate(cache: Path, repo: str = REPO, seed: int = 0) -> Path:
    """A snapshot in the Hub cache layout: refs/main -> snapshots/<commit>/{config, weights}."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    tiny_clip(seed).save_pretrained(snapshot)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """An empty cache of our own, and any real download attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub-cache"


def image_features(model: CLIPModel) -> torch.Tensor:
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)


@pytest.mark.parametrize("name", [REPO, "ViT-B/32", "ViT-B-32"])
def test_cached_names_load_offline(no_network, name) -> None:
    populate(no_network)
    assert hub.resolve_backbone(name).parent.name == "snapshots"
    towers, _ = build_clip(BackboneConfig(checkpoint=Path(name)))
    torch.testing.assert_close(image_features(towers.model), image_features(tiny_clip()))


def test_load_model_backbone_accepts_a_hub_name(no_network) -> None:
    snapshot = populate(no_network, "openai/clip-vit-base-patch16", seed=3)
    encoder = vtrkit.load_model(backbone="ViT-B/16")
    assert encoder.source["path"] == str(snapshot.resolve())
    assert encoder.source["name"] == "ViT-B/16"
    assert math.isclose(encoder.model.logit_scale.item(), tiny_clip(3).logit_scale.item())


def test_offline_and_not_cached_names_the_cache_and_the_fetch_command(no_network) -> None:
    with pytest.raises(FileNotFoundError) as err:
        hub.resolve_backbone("ViT-L/14")
    message = str(err.value)
    assert str(no_network) in message
    assert "hf download openai/clip-vit-large-patch14" in message
    assert "HF_HUB_OFFLINE" in message


def test_transformers_offline_also_stops_downloads(no_network, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        hub.resolve_backbone(REPO)


def test_online_and_not_cached_downloads_into_the_cache_once(no_network, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def fake_download(repo: str, cache: Path) -> None:
        calls.append((repo, cache))
        populate(cache, repo)

    monkeypatch.setattr(hub, "download_snapshot", fake_download)
    first = hub.resolve_backbone(REPO)
    second = hub.resolve_backbone(REPO)
    assert first == second and first.is_dir()
    assert calls == [(REPO, no_network)]


def test_download_asks_for_config_tokenizer_and_safetensors_only(monkeypatch, tmp_path) -> None:
    asked = {}

    def fake_snapshot(repo, cache_dir, allow_patterns):
        asked["patterns"] = allow_patterns
        folder = tmp_path / "snap"
        folder.mkdir(exist_ok=True)
        return str(folder)

    def fake_file(repo, filename, cache_dir):
        asked["file"] = filename

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    hub.download_snapshot(REPO, tmp_path)
    assert "*.safetensors" in asked["patterns"] and "*.bin" not in asked["patterns"]
    assert asked["file"] == "pytorch_model.bin"  # only because the snapshot had no safetensors


def test_a_failed_download_says_what_to_check(no_network, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(repo: str, cache: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub, "download_snapshot", unreachable)
    with pytest.raises(FileNotFoundError, match=r"could not download .*network is unreachable"):
        hub.resolve_backbone(REPO)


def test_microsoft_xclip_names_get_an_explanation(no_network) -> None:
    with pytest.raises(CheckpointError, match="video recognition") as err:
        hub.resolve_backbone("microsoft/xclip-base-patch32")
    assert "XCLIPModel" in str(err.value) and "openai/clip-vit-base-patch32" in str(err.value)


def test_a_local_path_wins_over_a_name(no_network, monkeypatch, tmp_path) -> None:
    populate(no_network, seed=1)
    monkeypatch.chdir(tmp_path)
    tiny_clip(seed=2).save_pretrained(tmp_path / REPO)
    assert hub.resolve_backbone(REPO) == Path(REPO)
    towers, _ = build_clip(BackboneConfig(checkpoint=Path(REPO)))
    torch.testing.assert_close(image_features(towers.model), image_features(tiny_clip(2)))


def test_a_path_that_is_not_a_name_is_reported_as_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found: give a local"):
        hub.resolve_backbone(tmp_path / "weights" / "ViT-B-32.pt")
