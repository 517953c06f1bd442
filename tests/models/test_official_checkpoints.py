"""Official X-CLIP / CLIP4Clip fine-tuned checkpoints load wherever a vtrkit checkpoint does.

Each test writes an official-layout state dict (``pytorch_model.bin.<epoch>``) from a vtrkit
model's own weights, loads it back through the path ``vtrkit eval`` takes (resolve, config from
the keys, build, load weights) and through ``load_model(checkpoint=...)``, and compares logits.
The X-CLIP head and temporal transformer are also checked against the official formulas applied
directly to the official keys, so a mapping that swapped two matrices could not pass.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from official_reference import ARCH, CAPTIONS, NF, NW, D, S, official_blocks, transformer_clip
from safetensors.torch import load_file
from typer.testing import CliRunner

import vtrkit
from vtrkit.backbones.convert import CheckpointError
from vtrkit.backbones.official_finetuned import official_to_vtrkit, vtrkit_to_official
from vtrkit.checkpoint import (
    MODEL_FILE,
    config_for_checkpoint,
    load_checkpoint_config,
    load_trained,
    load_weights,
    resolve_checkpoint,
)
from vtrkit.cli import _register_all, app
from vtrkit.config import BackboneConfig, DataConfig, ModelConfig
from vtrkit.models.build import build_model

torch.set_num_threads(1)


def trained_like(kind: str, seed: int = 0, **kwargs):
    """A tiny model whose every weight is perturbed (head matrices far from the identity)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=kind, backbone=BackboneConfig(arch=ARCH), temporal_layers=2, **kwargs)
    model, tok = build_model(cfg, DataConfig(num_frames=NF, max_words=NW, image_size=S))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("head."):
                p.add_(0.3 * torch.randn_like(p))
            elif not name.startswith("towers."):
                p.add_(0.02 * torch.randn_like(p))
    return model.eval(), tok


def inputs(tok):
    g = torch.Generator().manual_seed(5)
    ids, mask = tok(CAPTIONS, NW)
    video_mask = torch.arange(NF)[None] < torch.tensor([4, 2, 1, 3])[:, None]
    frames = torch.randn(4, NF, 3, S, S, generator=g)
    frames[~video_mask] = 0.0
    return ids, mask, frames, video_mask


def logits_of(model, ids, mask, frames, video_mask) -> torch.Tensor:
    with torch.no_grad():
        return model.similarity(
            model.encode_text(ids, mask), model.encode_video(frames, video_mask)
        )


def write_official(folder: Path, model, epoch: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pytorch_model.bin.{epoch}"
    torch.save(vtrkit_to_official(model.state_dict()), path)
    return path


def load_like_eval(path: Path):
    """The steps of ``vtrkit eval`` (train.pipeline.evaluate_checkpoint) before scoring."""
    folder = resolve_checkpoint(path)
    cfg = config_for_checkpoint(path) or load_checkpoint_config(folder)
    model, _ = build_model(cfg.model, cfg.data)
    load_weights(model, folder)
    return model.eval(), cfg


def official_xclip(sd, sentence, words, clip, video_mask) -> torch.Tensor:
    """X-CLIP's _loose_similarity (seqTransf) written out on the official keys."""
    blocks = official_blocks(sd, "transformerClip.resblocks.")
    heads = D // 64
    seq = transformer_clip(clip, video_mask, sd["frame_position_embeddings.weight"], blocks, heads)
    video = F.normalize(seq, dim=-1) * video_mask[..., None]
    video = F.normalize(video.sum(1) / video_mask.sum(1, keepdim=True), dim=-1)
    frames = F.normalize(clip, dim=-1)
    s, w = F.normalize(sentence, dim=-1), F.normalize(words, dim=-1)
    scale = sd["clip.logit_scale"].exp()

    def weighted(x, dim, mat):  # sum(x * (softmax(x / 0.01 along dim) re-mixed by mat))
        soft = torch.softmax(x / 1e-2, dim=dim).movedim(dim, -1) @ mat
        return (x * soft.movedim(-1, dim)).sum(dim)

    vs = s @ sd["global_mat_weight"] @ video.T
    vw = weighted(w @ video.T, 1, sd["word_logit_weight"])
    sf = weighted(torch.matmul(s, frames.permute(0, 2, 1)), -1, sd["frame_logit_weight"]).T
    fine = (w.reshape(-1, D) @ sd["local_mat_weight"] @ frames.reshape(-1, D).T).view(
        w.shape[0], NW, clip.shape[0], NF
    )
    word_level = weighted(fine, 1, sd["word_mat_weight"])  # [T, V, Nf]
    frame_level = weighted(fine, -1, sd["frame_mat_weight"])  # [T, Nw, V]
    s2f = weighted(word_level, -1, sd["frame_mat_weight2"])
    v2w = weighted(frame_level, 1, sd["word_mat_weight2"])
    fw = (s2f + v2w) / 2
    return scale * (vs + vw + sf + fw) / 4


def test_xclip_official_checkpoint_loads_with_the_same_logits(tmp_path, caplog) -> None:
    model, tok = trained_like("xclip")
    ids, mask, frames, video_mask = inputs(tok)
    want = logits_of(model, ids, mask, frames, video_mask)
    run = tmp_path / "ckpts" / "ckpt_msrvtt_xclip"
    older, _ = trained_like("xclip", seed=7)
    write_official(run, older, epoch=4)  # the last epoch, but not the best one
    path = write_official(run, model, epoch=2)
    (run / "log.txt").write_text(
        f"... Epoch 2/5 Finished\nThe best model is: {path}, the R1 is: 46.1000\n"
    )

    with caplog.at_level(logging.INFO, logger="vtrkit.checkpoint"):
        loaded, cfg = load_like_eval(run)  # the folder: the epoch log.txt names
    assert cfg.model.kind == "xclip" and cfg.model.temporal_layers == 2
    assert (cfg.data.num_frames, cfg.data.max_words) == (NF, NW)
    assert "kind xclip" in caplog.text and f"Nf={NF}, Nw={NW}" in caplog.text
    torch.testing.assert_close(
        logits_of(loaded, ids, mask, frames, video_mask), want, atol=1e-6, rtol=0
    )

    encoder = vtrkit.load_model(checkpoint=path)  # the API (index, serve) path
    with torch.no_grad():
        texts = encoder.encode_texts(CAPTIONS)
        videos = encoder.encode_video_windows(frames, video_mask)
    torch.testing.assert_close(encoder.rerank_scores(texts, videos), want, atol=1e-6, rtol=0)

    # The official formulas on the official keys give the same numbers.
    sd = torch.load(path, weights_only=True)
    with torch.no_grad():
        sentence, words = model.towers.encode_text(ids, mask)
        clip = model.towers.encode_image(frames.flatten(0, 1)).view(4, NF, D)
        reference = official_xclip(sd, sentence, words, clip, video_mask)
    torch.testing.assert_close(reference, want, atol=1e-4, rtol=1e-5)
    assert want.std() > 0.5


@pytest.mark.parametrize("kind", ["meanP", "seqTransf", "seqLSTM", "tightTransf"])
def test_clip4clip_official_checkpoint_loads_with_the_same_logits(tmp_path, kind) -> None:
    model, tok = trained_like(kind, tight={"layers": 2})
    ids, mask, frames, video_mask = inputs(tok)
    want = logits_of(model, ids, mask, frames, video_mask)
    path = write_official(tmp_path / "run", model)
    if kind == "seqLSTM":  # the official seqLSTM also saves a frame table it never uses
        sd = torch.load(path, weights_only=True)
        sd["frame_position_embeddings.weight"] = torch.randn(77, D)
        torch.save(sd, path)
    loaded, cfg = load_like_eval(path)
    assert cfg.model.kind == kind
    assert (cfg.data.num_frames, cfg.data.max_words) == (12, 32)  # CLIP4Clip's defaults
    torch.testing.assert_close(
        logits_of(loaded, ids, mask, frames, video_mask), want, atol=1e-6, rtol=0
    )
    trained = load_trained(tmp_path / "run", cfg=cfg)
    assert trained.folder == path
    torch.testing.assert_close(
        logits_of(trained.model, ids, mask, frames, video_mask), want, atol=1e-6, rtol=0
    )


def test_convert_writes_a_vtrkit_checkpoint_that_round_trips(tmp_path) -> None:
    model, tok = trained_like("xclip")
    ids, mask, frames, video_mask = inputs(tok)
    path = write_official(tmp_path / "official", model)
    _register_all()
    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["convert", str(path), "-o", str(out), "--set", "name=mine"])
    assert result.exit_code == 0, result.output
    assert "xclip" in result.output
    trained = load_trained(out)
    assert trained.folder == out and trained.config.name == "mine"
    want = logits_of(model, ids, mask, frames, video_mask)
    torch.testing.assert_close(
        logits_of(trained.model, ids, mask, frames, video_mask), want, atol=1e-6, rtol=0
    )
    back = vtrkit_to_official(load_file(str(out / MODEL_FILE)))
    original = torch.load(path, weights_only=True)
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor), key
    again = CliRunner().invoke(app, ["convert", str(path), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_keys_without_a_home_and_missing_keys_are_named(tmp_path) -> None:
    model, _ = trained_like("seqTransf")
    sd = vtrkit_to_official(model.state_dict())
    with pytest.raises(CheckpointError, match=r"cross_frame_gate\.weight"):
        official_to_vtrkit({**sd, "cross_frame_gate.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"clip\.visual\.conv2\.weight"):
        official_to_vtrkit({**sd, "clip.visual.conv2.weight": torch.zeros(3)})
    partial = dict(sd)
    del partial["transformerClip.resblocks.1.mlp.c_fc.bias"]
    torch.save(partial, tmp_path / "pytorch_model.bin.0")
    with pytest.raises(
        RuntimeError, match=r"missing \['transformerClip\.resblocks\.1\.mlp\.c_fc\.bias'\]"
    ):
        load_trained(tmp_path / "pytorch_model.bin.0")
    xclip_part = {k: v for k, v in sd.items()} | {"global_mat_weight": torch.eye(D)}
    with pytest.raises(CheckpointError, match="word_logit_weight"):
        official_to_vtrkit(xclip_part)
    (tmp_path / "notes.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError, match="neither a vtrkit checkpoint folder"):
        resolve_checkpoint(tmp_path / "notes.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin\.<epoch>"):
        resolve_checkpoint(tmp_path / "empty")


def test_backbone_from_an_official_file_uses_its_clip_towers(tmp_path, caplog) -> None:
    model, tok = trained_like("xclip")
    path = write_official(tmp_path, model)
    with caplog.at_level(logging.INFO, logger="vtrkit.backbones.checkpoints"):
        encoder = vtrkit.load_model(backbone=path)
    assert "using its CLIP towers" in caplog.text
    _, _, frames, video_mask = inputs(tok)
    ids, mask = tok(CAPTIONS, encoder.data_cfg.max_words)  # the zero-shot encoder's Nw
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        clip = model.towers.encode_image(frames.flatten(0, 1)).view(4, NF, D)
        got_text = encoder.encode_texts(CAPTIONS)
        got_video = encoder.encode_video_windows(frames, video_mask)
    torch.testing.assert_close(got_text.sentence, text.sentence, atol=1e-6, rtol=0)
    pooled = (F.normalize(clip, dim=-1) * video_mask[..., None]).sum(1)
    torch.testing.assert_close(got_video.video, F.normalize(pooled, dim=-1), atol=1e-6, rtol=0)
    assert math.isclose(encoder.model.logit_scale.item(), model.logit_scale.item())


def test_vtrkit_eval_scores_an_official_output_folder_as_its_vtrkit_twin(tmp_path) -> None:
    """The command itself on a small synthetic test split (data named by --set): the official
    folder and a vtrkit checkpoint of the same model give the same metrics."""
    from vtrkit.data.synthetic import generate
    from vtrkit.train.checkpoint import save_checkpoint

    data = tmp_path / "synthetic"
    generate(data, n_train=2, n_test=6, n_long=0, seed=1, workers=1)
    model, _ = trained_like("xclip")
    official = write_official(tmp_path / "ckpt_xclip", model, epoch=0)
    twin = load_checkpoint_config(official)
    save_checkpoint(tmp_path / "twin", model, twin)
    _register_all()
    results = {}
    for name, target in (("official", tmp_path / "ckpt_xclip"), ("twin", tmp_path / "twin")):
        out = tmp_path / f"{name}.json"
        args = ["eval", str(target), "--set", f"data.root={data}", "--json", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        results[name] = json.loads(out.read_text())
    assert results["official"]["checkpoint"] == str(official)
    assert results["official"]["num_videos"] == 6
    assert results["official"]["raw"] == results["twin"]["raw"]
    assert results["official"]["dsl"] == results["twin"]["dsl"]


def test_an_output_folder_without_log_uses_the_last_epoch(tmp_path, caplog) -> None:
    first, tok = trained_like("seqTransf", seed=1)
    last, _ = trained_like("seqTransf", seed=2)
    write_official(tmp_path, last, epoch=10)
    write_official(tmp_path, first, epoch=9)
    (tmp_path / "pytorch_opt.bin.10").write_bytes(b"optimizer state, not a model")
    with caplog.at_level(logging.WARNING, logger="vtrkit.checkpoint"):
        assert resolve_checkpoint(tmp_path) == tmp_path / "pytorch_model.bin.10"
    assert "using the last epoch, pytorch_model.bin.10" in caplog.text
    ids, mask, frames, video_mask = inputs(tok)
    loaded = load_trained(tmp_path).model
    torch.testing.assert_close(
        logits_of(loaded, ids, mask, frames, video_mask),
        logits_of(last, ids, mask, frames, video_mask),
        atol=1e-6,
        rtol=0,
    )
