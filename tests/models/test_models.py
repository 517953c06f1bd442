"""CLIP4Clip (meanP, seqTransf) and X-CLIP on a tiny random CLIP: pooling, encoders, forward and
backward, padding invariance, switches, parameter groups and build errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vtrkit.config import BackboneConfig, ClipArch, DataConfig, ModelConfig, XClipConfig
from vtrkit.losses.contrastive import symmetric_infonce
from vtrkit.models import Clip4Clip, XClip, build_model
from vtrkit.models.pooling import masked_mean
from vtrkit.train.objectives import ContrastiveObjective
from vtrkit.train.optim import no_decay_parameter_names

torch.set_num_threads(1)
NF, NW, S, D = 4, 8, 16, 32
ARCH = ClipArch(
    embed_dim=D,
    image_size=S,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    text_width=D,
    text_layers=2,
    text_heads=2,
)
DATA = DataConfig(num_frames=NF, max_words=NW, image_size=S)
CAPTIONS = ["a red circle moves left", "a dog", "two blue squares grow then shrink slowly"]


def build(kind: str, **kwargs):
    torch.manual_seed(0)
    settings = {"temporal_layers": 2, "temporal_heads": 4, **kwargs}
    cfg = ModelConfig(kind=kind, backbone=BackboneConfig(arch=ARCH), **settings)
    return build_model(cfg, DATA)


@pytest.fixture(scope="module")
def built() -> dict:
    return {kind: build(kind) for kind in ("meanP", "seqTransf", "xclip")}


def make_batch(tokenizer) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids, mask = tokenizer(CAPTIONS, NW)
    video_mask = torch.arange(NF)[None, :] < torch.tensor([4, 2, 1])[:, None]
    frames = torch.randn(3, NF, 3, S, S, generator=g)
    frames[~video_mask] = 0.0  # padded slots are zero images
    return {"frames": frames, "video_mask": video_mask, "input_ids": ids, "text_mask": mask}


def test_masked_mean_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(3, 5, 7, generator=g)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]).bool()
    want = []
    for v in range(3):
        real = [frames[v, f] / frames[v, f].norm() for f in range(5) if mask[v, f]]
        mean = sum(real) / len(real)
        want.append(mean / mean.norm())
    torch.testing.assert_close(masked_mean(frames, mask), torch.stack(want))
    with pytest.raises(ValueError, match="no real frame"):
        masked_mean(frames, torch.zeros(3, 5, dtype=torch.bool))


@pytest.mark.parametrize("kind", ["meanP", "seqTransf", "xclip"])
def test_forward_backward_and_consistency(built: dict, kind: str) -> None:
    model, tokenizer = built[kind]
    model.zero_grad()
    batch = make_batch(tokenizer)
    out = ContrastiveObjective()(model, batch)
    assert out["logits"].shape == (3, 3)
    torch.testing.assert_close(out["loss"], symmetric_infonce(out["logits"]))
    torch.testing.assert_close(out["logit_scale"], model.logit_scale.exp().detach())
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["text_mask"])
        video = model.encode_video(batch["frames"], batch["video_mask"])
        torch.testing.assert_close(model.similarity(text, video), out["logits"].detach())
    for feats in (text.sentence, text.words, video.video, video.frames):
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(feats.shape[:-1]))
    out["loss"].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    new_params = model.param_groups()[1]
    assert len(new_params) > 0 or kind == "meanP"
    for p in new_params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0
    vision = model.towers.model.visual_projection.weight
    assert vision.grad is not None and vision.grad.abs().sum() > 0


def test_meanp_similarity_is_scaled_cosine_of_masked_mean(built: dict) -> None:
    model, tokenizer = built["meanP"]
    batch = make_batch(tokenizer)
    with torch.no_grad():
        frames = model.towers.encode_image(batch["frames"].flatten(0, 1)).view(3, NF, D)
        sentence, _ = model.towers.encode_text(batch["input_ids"], batch["text_mask"])
        got = model.similarity(
            model.encode_text(batch["input_ids"], batch["text_mask"]),
            model.encode_video(batch["frames"], batch["video_mask"]),
        )
    want = torch.zeros(3, 3)
    for i in range(3):
        for j in range(3):
            real = [
                F.normalize(frames[j, f], dim=0) for f in range(NF) if batch["video_mask"][j, f]
            ]
            video = F.normalize(sum(real) / len(real), dim=0)
            want[i, j] = model.logit_scale.exp() * F.normalize(sentence[i], dim=0) @ video
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["seqTransf", "xclip"])
def test_padded_frames_content_does_not_matter(built: dict, kind: str) -> None:
    model, tokenizer = built[kind]
    batch = make_batch(tokenizer)
    noisy = batch["frames"].clone()
    noisy[~batch["video_mask"]] = torch.randn_like(noisy[~batch["video_mask"]])
    with torch.no_grad():
        a = model.encode_video(batch["frames"], batch["video_mask"])
        b = model.encode_video(noisy, batch["video_mask"])
    torch.testing.assert_close(a.video, b.video, atol=1e-5, rtol=1e-5)
    real = batch["video_mask"]
    torch.testing.assert_close(a.frames[real], b.frames[real], atol=1e-5, rtol=1e-5)


def test_xclip_frames_before_or_after_temporal() -> None:
    before, tokenizer = build("xclip")
    after, _ = build("xclip", xclip=XClipConfig(frames_after_temporal=True))
    assert isinstance(before, XClip) and isinstance(after, XClip)
    after.load_state_dict(before.state_dict())
    batch = make_batch(tokenizer)
    with torch.no_grad():
        clip, seq = before.encode_frames(batch["frames"], batch["video_mask"])
        v_before = before.encode_video(batch["frames"], batch["video_mask"])
        v_after = after.encode_video(batch["frames"], batch["video_mask"])
    assert not torch.allclose(clip, seq, atol=1e-3)
    torch.testing.assert_close(v_before.frames, F.normalize(clip, dim=-1))
    torch.testing.assert_close(v_after.frames, F.normalize(seq, dim=-1))
    torch.testing.assert_close(v_before.video, v_after.video)
    torch.testing.assert_close(v_before.video, masked_mean(seq, batch["video_mask"]))


def test_xclip_similarity_block_size_independent(built: dict) -> None:
    model, tokenizer = built["xclip"]
    batch = make_batch(tokenizer)
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["text_mask"])
        video = model.encode_video(batch["frames"], batch["video_mask"])
        full = model.similarity(text, video)
        torch.testing.assert_close(model.similarity(text, video, text_block=1), full)


def test_temporal_encoder_built_from_clip_text_layers(built: dict) -> None:
    model, _ = built["seqTransf"]
    assert model.temporal is not None and len(model.temporal.blocks) == 2
    for block, layer in zip(model.temporal.blocks, model.towers.text_layers, strict=False):
        for name, tensor in layer.state_dict().items():
            assert torch.equal(block.state_dict()[name], tensor), name
    torch.testing.assert_close(
        model.temporal.frame_position.weight, model.towers.text_positional_embedding
    )
    off, _ = build("xclip", temporal=False)
    assert off.temporal is None
    assert build("seqTransf", temporal_layers=0)[0].temporal is None
    assert built["meanP"][0].temporal is None


def test_param_groups_and_no_decay(built: dict) -> None:
    model, _ = built["xclip"]
    backbone, new = model.param_groups()
    all_ids = {id(p) for p in model.parameters()}
    assert {id(p) for p in backbone} | {id(p) for p in new} == all_ids
    assert not {id(p) for p in backbone} & {id(p) for p in new}
    assert any(p is model.logit_scale for p in backbone)
    assert any(p is model.head.global_mat for p in new)
    assert any(p is model.temporal.blocks[0].mlp.fc1.weight for p in new)
    names = no_decay_parameter_names(model)
    assert "towers.model.logit_scale" in names
    assert "temporal.frame_position.weight" in names
    assert "temporal.blocks.0.layer_norm1.weight" in names
    assert "temporal.blocks.0.mlp.fc1.bias" in names
    assert "towers.model.text_model.embeddings.token_embedding.weight" in names
    assert "towers.model.vision_model.embeddings.class_embedding" in names
    assert "head.global_mat" not in names
    assert "temporal.blocks.0.mlp.fc1.weight" not in names
    assert "towers.model.visual_projection.weight" not in names
    assert names <= {name for name, _ in model.named_parameters()}


def test_errors_name_the_problem(built: dict) -> None:
    model, tokenizer = built["seqTransf"]
    batch = make_batch(tokenizer)
    with pytest.raises(ValueError, match="no real frame"):
        model.encode_video(batch["frames"], torch.zeros(3, NF, dtype=torch.bool))
    # VideoCLIP trains on stored per-second features; build_model points to its own command.
    with pytest.raises(ValueError, match="videoclip-train"):
        build_model(ModelConfig(kind="videoclip"), DATA)
    with pytest.raises(ValueError, match="num_frames"):
        build_model(ModelConfig(kind="xclip"), DataConfig(num_frames=78))
    assert isinstance(built["meanP"][0], Clip4Clip)
