"""Key converters between OpenAI CLIP and Hugging Face CLIPModel state dicts."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPAttention

from vtrkit.backbones.convert import (
    CheckpointError,
    clip_config,
    hf_to_openai,
    infer_arch,
    openai_name,
    openai_to_hf,
)
from vtrkit.config import ClipArch

torch.set_num_threads(1)

ARCH = ClipArch(
    embed_dim=24,
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    text_width=48,
    text_layers=3,
    text_heads=4,
    context_length=20,
    vocab_size=100,
)


def _hf_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return CLIPModel(clip_config(ARCH)).state_dict()


def _expected_openai_shapes(a: ClipArch) -> dict[str, tuple[int, ...]]:
    """OpenAI CLIP's parameter names and shapes, written out from its model definition."""
    shapes: dict[str, tuple[int, ...]] = {
        "visual.class_embedding": (a.vision_width,),
        "visual.positional_embedding": ((a.image_size // a.patch_size) ** 2 + 1, a.vision_width),
        "visual.conv1.weight": (a.vision_width, 3, a.patch_size, a.patch_size),
        "visual.ln_pre.weight": (a.vision_width,),
        "visual.ln_pre.bias": (a.vision_width,),
        "visual.ln_post.weight": (a.vision_width,),
        "visual.ln_post.bias": (a.vision_width,),
        "visual.proj": (a.vision_width, a.embed_dim),
        "token_embedding.weight": (a.vocab_size, a.text_width),
        "positional_embedding": (a.context_length, a.text_width),
        "ln_final.weight": (a.text_width,),
        "ln_final.bias": (a.text_width,),
        "text_projection": (a.text_width, a.embed_dim),
        "logit_scale": (),
    }
    towers = (("visual.", a.vision_width, a.vision_layers), ("", a.text_width, a.text_layers))
    for prefix, w, layers in towers:
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            shapes |= {
                p + "attn.in_proj_weight": (3 * w, w),
                p + "attn.in_proj_bias": (3 * w,),
                p + "attn.out_proj.weight": (w, w),
                p + "attn.out_proj.bias": (w,),
                p + "ln_1.weight": (w,),
                p + "ln_1.bias": (w,),
                p + "mlp.c_fc.weight": (4 * w, w),
                p + "mlp.c_fc.bias": (4 * w,),
                p + "mlp.c_proj.weight": (w, 4 * w),
                p + "mlp.c_proj.bias": (w,),
                p + "ln_2.weight": (w,),
                p + "ln_2.bias": (w,),
            }
    return shapes


def test_hf_to_openai_produces_exactly_openai_names_and_shapes() -> None:
    openai = hf_to_openai(_hf_state_dict())
    got = {k: tuple(v.shape) for k, v in openai.items()}
    assert got == _expected_openai_shapes(ARCH)


def test_round_trips_are_identity() -> None:
    hf = _hf_state_dict()
    back = openai_to_hf(hf_to_openai(hf))
    assert set(back) == set(hf)
    for key, value in hf.items():
        assert torch.equal(back[key], value), key
    openai = hf_to_openai(hf)
    again = hf_to_openai(openai_to_hf(openai))
    assert set(again) == set(openai)
    for key, value in openai.items():
        assert torch.equal(again[key], value), key


def test_projections_are_transposed() -> None:
    hf = _hf_state_dict()
    openai = hf_to_openai(hf)
    x = torch.randn(5, ARCH.text_width)
    linear = x @ hf["text_projection.weight"].T
    torch.testing.assert_close(x @ openai["text_projection"], linear, rtol=0, atol=1e-6)
    assert torch.equal(openai["visual.proj"], hf["visual_projection.weight"].T)


def test_fused_attention_split_matches_multihead_attention() -> None:
    """OpenAI's blocks are nn.MultiheadAttention; its fused in_proj is query, key, value."""
    torch.manual_seed(1)
    width, heads = 48, 4
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    prefix = "transformer.resblocks.0.attn."
    openai = {prefix + k: v.detach() for k, v in mha.state_dict().items()}
    hf = openai_to_hf(openai)
    attn = CLIPAttention(clip_config(ARCH).text_config)
    attn.load_state_dict(
        {k.removeprefix("text_model.encoder.layers.0.self_attn."): v for k, v in hf.items()}
    )
    x = torch.randn(2, 7, width)
    expected, _ = mha(x, x, x, need_weights=False)
    got, _ = attn(x, attention_mask=None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_and_incomplete_keys_pass_through() -> None:
    extra = torch.ones(3)
    assert torch.equal(
        openai_to_hf({"visual.attnpool.weight": extra})["visual.attnpool.weight"], extra
    )
    q_only = {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.ones(2, 2)}
    assert set(hf_to_openai(q_only)) == set(q_only)


def test_openai_name_of_hf_keys() -> None:
    assert openai_name("vision_model.encoder.layers.1.self_attn.k_proj.bias") == (
        "visual.transformer.resblocks.1.attn.in_proj_bias"
    )
    assert openai_name("text_model.encoder.layers.0.mlp.fc1.weight") == (
        "transformer.resblocks.0.mlp.c_fc.weight"
    )
    assert openai_name("visual_projection.weight") == "visual.proj"
    assert openai_name("something.else") == "something.else"


def test_infer_arch_reads_every_shape() -> None:
    arch = ARCH.model_copy(update={"vision_mlp_dim": 96, "text_mlp_dim": 200})
    torch.manual_seed(0)
    openai = hf_to_openai(CLIPModel(clip_config(arch)).state_dict())
    got = infer_arch(openai, vision_heads=2, text_heads=4)
    assert got == arch
    default_heads = infer_arch(openai)
    assert (default_heads.vision_heads, default_heads.text_heads) == (1, 1)


def test_infer_arch_errors_name_the_problem() -> None:
    openai = hf_to_openai(_hf_state_dict())
    with pytest.raises(CheckpointError, match="ResNet"):
        infer_arch({"visual.layer1.0.conv1.weight": torch.ones(1)})
    with pytest.raises(CheckpointError, match=r"missing ln_final\.weight"):
        infer_arch({k: v for k, v in openai.items() if k != "ln_final.weight"})
    with pytest.raises(CheckpointError, match=r"model\.backbone\.text_heads"):
        infer_arch(openai, text_heads=5)
    with pytest.raises(CheckpointError, match="not 3 x width"):
        openai_to_hf({"transformer.resblocks.0.attn.in_proj_weight": torch.ones(4, 2)})
