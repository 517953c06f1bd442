"""CLIP towers: numerics against a hand-written OpenAI CLIP forward, every checkpoint format,
and the errors of the loaders.

The reference weights are a tiny random CLIP written directly under OpenAI's key names, so the
checks do not depend on the converter they test.
"""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from vtrkit.backbones.checkpoints import CheckpointFormat, detect_format
from vtrkit.backbones.clip import ClipTowers, build_clip, clip_from_arch
from vtrkit.backbones.convert import CheckpointError, hf_to_openai
from vtrkit.backbones.tokenizer import ClipTokenizer
from vtrkit.config import BackboneConfig, ClipArch

torch.set_num_threads(1)

EMBED, WIDTH, HEADS, LAYERS, PATCH, IMAGE, CONTEXT, VOCAB = 24, 32, 2, 2, 8, 32, 77, 49408


def _openai_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """A random ViT CLIP in OpenAI's layout (vision and text width 32, 2 layers, 2 heads)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.1) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "visual.class_embedding": rnd(WIDTH, scale=0.5),
        "visual.positional_embedding": rnd((IMAGE // PATCH) ** 2 + 1, WIDTH),
        "visual.conv1.weight": rnd(WIDTH, 3, PATCH, PATCH, scale=0.05),
        "visual.ln_pre.weight": 1 + rnd(WIDTH),
        "visual.ln_pre.bias": rnd(WIDTH),
        "visual.ln_post.weight": 1 + rnd(WIDTH),
        "visual.ln_post.bias": rnd(WIDTH),
        "visual.proj": rnd(WIDTH, EMBED, scale=0.2),
        "token_embedding.weight": rnd(VOCAB, WIDTH, scale=0.5),
        "positional_embedding": rnd(CONTEXT, WIDTH),
        "ln_final.weight": 1 + rnd(WIDTH),
        "ln_final.bias": rnd(WIDTH),
        "text_projection": rnd(WIDTH, EMBED, scale=0.2),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for prefix in ("visual.transformer.resblocks.", "transformer.resblocks."):
        for i in range(LAYERS):
            p = f"{prefix}{i}."
            sd |= {
                p + "attn.in_proj_weight": rnd(3 * WIDTH, WIDTH, scale=0.2),
                p + "attn.in_proj_bias": rnd(3 * WIDTH),
                p + "attn.out_proj.weight": rnd(WIDTH, WIDTH, scale=0.2),
                p + "attn.out_proj.bias": rnd(WIDTH),
                p + "ln_1.weight": 1 + rnd(WIDTH),
                p + "ln_1.bias": rnd(WIDTH),
                p + "mlp.c_fc.weight": rnd(4 * WIDTH, WIDTH, scale=0.2),
                p + "mlp.c_fc.bias": rnd(4 * WIDTH),
                p + "mlp.c_proj.weight": rnd(WIDTH, 4 * WIDTH, scale=0.1),
                p + "mlp.c_proj.bias": rnd(WIDTH),
                p + "ln_2.weight": 1 + rnd(WIDTH),
                p + "ln_2.bias": rnd(WIDTH),
            }
    return sd


# ---- a hand-written OpenAI CLIP forward (the reference) ----


def _ln(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], 1e-5)


def _block(sd: dict[str, Tensor], p: str, x: Tensor, causal: bool) -> Tensor:
    n, length, w = x.shape
    h = _ln(sd, p + "ln_1", x)
    q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, -1)
    q, k, v = (t.reshape(n, length, HEADS, w // HEADS).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // HEADS)
    if causal:
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, w)
    x = x + a @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = _ln(sd, p + "ln_2", x) @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def _reference_image(sd: dict[str, Tensor], pixels: Tensor) -> Tensor:
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = _ln(sd, "visual.ln_pre", x)
    for i in range(LAYERS):
        x = _block(sd, f"visual.transformer.resblocks.{i}.", x, causal=False)
    return _ln(sd, "visual.ln_post", x[:, 0]) @ sd["visual.proj"]


def _reference_words(sd: dict[str, Tensor], ids: Tensor) -> Tensor:
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(LAYERS):
        x = _block(sd, f"transformer.resblocks.{i}.", x, causal=True)
    return _ln(sd, "ln_final", x) @ sd["text_projection"]


def _texts(lengths: list[int], nw: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random token ids laid out as the tokenizer does: start, tokens, end, 0-padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), nw, dtype=torch.long)
    mask = torch.zeros(len(lengths), nw, dtype=torch.bool)
    for row, n in enumerate(lengths):
        ids[row, 0] = VOCAB - 2
        ids[row, 1 : n - 1] = torch.randint(1, VOCAB - 2, (n - 2,), generator=g)
        ids[row, n - 1] = VOCAB - 1
        mask[row, :n] = True
    return ids, mask


class _Holder(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def _save_torchscript(sd: dict[str, Tensor], path: Path) -> None:
    """A TorchScript archive whose state dict has OpenAI's key names, like the released .pt."""
    root = _Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if name not in module._modules:
                module.add_module(name, _Holder())
            module = module._modules[name]
        module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    for name, value in (
        ("input_resolution", IMAGE),
        ("context_length", CONTEXT),
        ("vocab_size", VOCAB),
    ):
        root.register_buffer(name, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.13
        torch.jit.save(torch.jit.script(root), str(path))


CFG_EXTRA = {"vision_heads": HEADS, "text_heads": HEADS}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same weights in every supported format."""
    root = tmp_path_factory.mktemp("clip")
    sd = _openai_state_dict()
    paths = {
        "openai_state_dict": root / "openai.pt",
        "torchscript": root / "ViT-tiny.pt",
        "open_clip_nested": root / "epoch_1.pt",
        "safetensors": root / "open_clip.safetensors",
        "open_clip_hub": root / "hub",
        "hf_folder": root / "hf",
    }
    torch.save(sd, paths["openai_state_dict"])
    _save_torchscript(sd, paths["torchscript"])
    nested = {"epoch": 1, "state_dict": {"module." + k: v for k, v in sd.items()}}
    torch.save(nested, paths["open_clip_nested"])
    save_file(sd, str(paths["safetensors"]))
    paths["open_clip_hub"].mkdir()
    save_file(sd, str(paths["open_clip_hub"] / "open_clip_model.safetensors"))
    towers, _ = build_clip(BackboneConfig(checkpoint=paths["openai_state_dict"], **CFG_EXTRA))
    towers.model.save_pretrained(str(paths["hf_folder"]))
    return paths


@pytest.fixture(scope="module")
def reference(checkpoints: dict[str, Path]) -> ClipTowers:
    towers, _ = build_clip(BackboneConfig(checkpoint=checkpoints["openai_state_dict"], **CFG_EXTRA))
    return towers


def test_towers_match_handwritten_openai_clip(reference: ClipTowers) -> None:
    sd = _openai_state_dict()
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    ids, mask = _texts([7, 3, 12], nw=12)
    with torch.no_grad():
        image = reference.encode_image(pixels)
        sentence, words = reference.encode_text(ids, mask)
        pooled = reference.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(image, _reference_image(sd, pixels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image, pooled, rtol=1e-6, atol=1e-6)
    expected_words = _reference_words(sd, ids)
    torch.testing.assert_close(words, expected_words, rtol=1e-5, atol=1e-5)
    # OpenAI pools at argmax(ids): the end token has the largest id.
    at_end = expected_words[torch.arange(3), ids.argmax(-1)]
    torch.testing.assert_close(sentence, at_end, rtol=1e-5, atol=1e-5)
    assert (
        reference.embed_dim == EMBED and image.shape == (3, EMBED) and words.shape == (3, 12, EMBED)
    )


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("openai_state_dict", CheckpointFormat.TORCH_STATE_DICT),
        ("torchscript", CheckpointFormat.TORCHSCRIPT),
        ("open_clip_nested", CheckpointFormat.TORCH_STATE_DICT),
        ("safetensors", CheckpointFormat.SAFETENSORS),
        ("open_clip_hub", CheckpointFormat.SAFETENSORS),
        ("hf_folder", CheckpointFormat.HF_FOLDER),
    ],
)
def test_every_format_gives_the_same_features(
    checkpoints: dict[str, Path], reference: ClipTowers, name: str, fmt: CheckpointFormat
) -> None:
    assert detect_format(checkpoints[name]).format is fmt
    towers, tokenizer = build_clip(BackboneConfig(checkpoint=checkpoints[name], **CFG_EXTRA))
    assert isinstance(tokenizer, ClipTokenizer)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    ids, mask = tokenizer(["a photo of a cat", "a dog catches a frisbee in the park"], 16)
    with torch.no_grad():
        got = (towers.encode_image(pixels), *towers.encode_text(ids, mask))
        want = (reference.encode_image(pixels), *reference.encode_text(ids, mask))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(towers.logit_scale, reference.logit_scale)
    assert towers.model.config.text_config.num_attention_heads == HEADS


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    """Released OpenAI archives hold float16 weights."""
    sd = {k: v.half() for k, v in _openai_state_dict().items()}
    path = tmp_path / "fp16.pt"
    _save_torchscript(sd, path)
    towers, _ = build_clip(BackboneConfig(checkpoint=path, **CFG_EXTRA))
    weight = towers.model.text_projection.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, sd["text_projection"].float().T)


def test_sentence_is_the_end_token_and_ignores_padding(reference: ClipTowers) -> None:
    ids, mask = _texts([5, 9], nw=12, seed=4)
    noisy = ids.clone()
    noisy[~mask] = torch.randint(1, 100, (int((~mask).sum()),))
    with torch.no_grad():
        sentence, words = reference.encode_text(ids, mask)
        sentence2, words2 = reference.encode_text(noisy, mask)
        shorter = mask.clone()
        shorter[0, 4] = False  # the mask alone decides where the sentence is read
        sentence3, _ = reference.encode_text(ids, shorter)
    torch.testing.assert_close(sentence, words[torch.arange(2), torch.tensor([4, 8])])
    torch.testing.assert_close(sentence2, sentence, rtol=0, atol=1e-6)
    assert not torch.allclose(words2[0, 5:], words[0, 5:])
    torch.testing.assert_close(sentence3[0], words[0, 3])


def test_short_contexts_use_the_first_positional_rows(reference: ClipTowers) -> None:
    ids, mask = _texts([6], nw=CONTEXT, seed=5)
    with torch.no_grad():
        full_s, full_w = reference.encode_text(ids, mask)
        short_s, short_w = reference.encode_text(ids[:, :16], mask[:, :16])
    torch.testing.assert_close(short_w, full_w[:, :16], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short_s, full_s, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceed the text context of 77"):
        reference.encode_text(
            torch.zeros(1, 78, dtype=torch.long), torch.ones(1, 78, dtype=torch.bool)
        )


def test_input_shape_errors(reference: ClipTowers) -> None:
    with pytest.raises(ValueError, match=r"data\.image_size to 32"):
        reference.encode_image(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="all-False mask"):
        reference.encode_text(
            torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool)
        )


def test_gradient_checkpointing_recomputes_and_keeps_gradients(
    checkpoints: dict[str, Path],
) -> None:
    ids, mask = _texts([6, 4], nw=8)
    pixels = torch.randn(2, 3, IMAGE, IMAGE)
    grads, calls = [], []
    for enabled in (False, True):
        towers, _ = build_clip(
            BackboneConfig(
                checkpoint=checkpoints["safetensors"], grad_checkpointing=enabled, **CFG_EXTRA
            )
        )
        assert towers.grad_checkpointing is enabled
        towers.train()
        count = [0]
        # Hooks on the layer itself sit outside the checkpoint; its first norm runs inside it
        # (and before the recomputation stops early, once every saved tensor is rebuilt).
        norm = towers.text_layers[0].layer_norm1
        norm.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        loss = towers.encode_text(ids, mask)[0].square().sum() + towers.encode_image(pixels).sum()
        loss.backward()
        calls.append(count[0])
        grads.append([p.grad.clone() for p in towers.parameters() if p.grad is not None])
    assert calls == [1, 2]
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_contract_attributes(reference: ClipTowers) -> None:
    assert len(reference.text_layers) == LAYERS
    assert all(isinstance(layer, CLIPEncoderLayer) for layer in reference.text_layers)
    assert reference.text_positional_embedding.shape == (CONTEXT, WIDTH)
    assert torch.equal(
        reference.text_positional_embedding, _openai_state_dict()["positional_embedding"]
    )
    assert isinstance(reference.logit_scale, nn.Parameter)
    assert reference.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert any(p is reference.logit_scale for p in reference.parameters())


def test_build_from_arch_and_vocabulary_check() -> None:
    arch = ClipArch(
        embed_dim=16,
        image_size=32,
        patch_size=16,
        vision_width=32,
        vision_layers=1,
        vision_heads=2,
        text_width=32,
        text_layers=1,
        text_heads=4,
        context_length=40,
    )
    torch.manual_seed(0)
    towers, tokenizer = build_clip(BackboneConfig(arch=arch, hidden_act="gelu"))
    assert towers.model.config.vision_config.hidden_act == "gelu"
    assert towers.text_positional_embedding.shape == (40, 32)
    ids, mask = tokenizer(["a red circle moves left"], 40)
    sentence, words = towers.encode_text(ids, mask)
    assert sentence.shape == (1, 16) and words.shape == (1, 40, 16)
    assert torch.isfinite(words).all()
    small = arch.model_copy(update={"vocab_size": 1000})
    with pytest.raises(ValueError, match=r"model\.backbone\.arch\.vocab_size"):
        build_clip(BackboneConfig(arch=small))
    assert clip_from_arch(small).vocab_size == 1000
    with pytest.raises(ValueError, match="either checkpoint"):
        build_clip(BackboneConfig())


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ViT-B-32.pt"
    with pytest.raises(FileNotFoundError, match=r"nowhere/ViT-B-32\.pt"):
        build_clip(BackboneConfig(checkpoint=missing))
    with pytest.raises(CheckpointError, match=r"without config\.json"):
        build_clip(BackboneConfig(checkpoint=tmp_path))


def test_missing_weight_is_named(tmp_path: Path) -> None:
    sd = _openai_state_dict()
    del sd["transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(
        CheckpointError,
        match=r"broken\.pt: missing CLIP weights transformer\.resblocks\.1\.mlp\.c_fc\.bias",
    ):
        build_clip(BackboneConfig(checkpoint=tmp_path / "broken.pt", **CFG_EXTRA))


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    sd = _openai_state_dict()
    sd["transformer.resblocks.1.attn.in_proj_weight"] = torch.zeros(3 * WIDTH, WIDTH + 2)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"OpenAI name transformer\.resblocks\.1\.attn\.in_proj_weight\) has shape \(32, 34\)",
    ):
        build_clip(BackboneConfig(checkpoint=tmp_path / "bad.safetensors", **CFG_EXTRA))


def test_unexpected_keys_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = _openai_state_dict()
    sd["visual.extra_head.weight"] = torch.zeros(2)
    del sd["logit_scale"]
    torch.save(sd, tmp_path / "extra.pt")
    with caplog.at_level(logging.WARNING, logger="vtrkit.backbones.checkpoints"):
        towers, _ = build_clip(BackboneConfig(checkpoint=tmp_path / "extra.pt", **CFG_EXTRA))
    assert "visual.extra_head.weight" in caplog.text
    assert "no logit_scale" in caplog.text
    assert towers.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-4)


def test_hf_folder_of_another_model_type_is_rejected(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "siglip"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "siglip"}')
    with pytest.raises(CheckpointError, match="model_type is 'siglip'"):
        build_clip(BackboneConfig(checkpoint=folder))


def test_converted_weights_save_back_to_openai_layout(reference: ClipTowers) -> None:
    back = hf_to_openai(reference.model.state_dict())
    for key, value in _openai_state_dict().items():
        assert torch.equal(back[key], value), key


def test_hf_folder_errors_name_the_key(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoints["hf_folder"] / name, tmp_path / name)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["text_model.final_layer_norm.weight"] = torch.ones(WIDTH + 1)
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"final_layer_norm\.weight has shape \(33,\)"):
        build_clip(BackboneConfig(checkpoint=tmp_path))
    del sd["text_model.final_layer_norm.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"missing CLIP weights text_model\.final_layer_norm\.weight"
    ):
        build_clip(BackboneConfig(checkpoint=tmp_path))
