"""CLIP2TV model: loss composition, vtm wiring, match probabilities, re-ranking, teachers."""

from __future__ import annotations

import copy
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vtrkit.config import (
    BackboneConfig,
    Clip2TVConfig,
    ClipArch,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
)
from vtrkit.data.datasets import read_dataset
from vtrkit.data.synthetic import generate
from vtrkit.eval.evaluate import evaluate
from vtrkit.eval.metrics import retrieval_metrics
from vtrkit.eval.rerank import evaluate_with_rerank, rerank_results
from vtrkit.losses.contrastive import symmetric_infonce
from vtrkit.losses.matching import matching_pairs, sample_hard_negatives, vtm_loss
from vtrkit.models import clip2tv as clip2tv_module
from vtrkit.models.build import build_model
from vtrkit.models.clip2tv import Clip2TV
from vtrkit.models.fusion import FusionTransformer
from vtrkit.models.meanpool import Clip4Clip
from vtrkit.models.temporal import TemporalEncoder
from vtrkit.train.checkpoint import save_checkpoint
from vtrkit.train.clip2tv_objective import Clip2TVObjective
from vtrkit.train.objectives import ContrastiveObjective
from vtrkit.train.optim import build_optimizer
from vtrkit.train.teacher import EmaTeacher, FrozenTeacher

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
CAPTIONS = [
    "a red circle moves left",
    "a shape moves",
    "a blue square grows",
    "a shape moves",
    "a green star appears then shrinks",
    "a yellow cube moves up",
]


def _config(**clip2tv) -> Config:
    return Config(
        data=DataConfig(num_frames=NF, max_words=NW, image_size=S),
        model=ModelConfig(
            kind="seqTransf",
            temporal_layers=1,
            temporal_heads=4,
            backbone=BackboneConfig(arch=ARCH),
            clip2tv=Clip2TVConfig(vtm_layers=2, vtm_heads=4, **clip2tv),
        ),
    )


@pytest.fixture(scope="module")
def vta_and_tokenizer():
    torch.manual_seed(0)
    cfg = _config()
    return build_model(cfg.model, cfg.data)


def _model(vta_and_tokenizer, **clip2tv) -> Clip2TV:
    """A CLIP2TV model; its training objective rides along as ``model.objective`` (test only)."""
    vta, _ = vta_and_tokenizer
    torch.manual_seed(1)
    cfg = _config(**clip2tv).model.clip2tv
    model = Clip2TV(copy.deepcopy(vta), D, cfg)
    model.objective = Clip2TVObjective(cfg)
    return model


def _step(model: Clip2TV, batch):
    """The training step's losses, as the training loop computes them."""
    return model.objective(model, batch)


@pytest.fixture(scope="module")
def batch(vta_and_tokenizer):
    _, tokenizer = vta_and_tokenizer
    gen = torch.Generator().manual_seed(2)
    ids, mask = tokenizer(CAPTIONS, NW)
    b = len(CAPTIONS)
    video_mask = torch.ones(b, NF, dtype=torch.bool)
    video_mask[1, -1] = False
    video_mask[4, 1:] = False
    keys = {c: i for i, c in enumerate(dict.fromkeys(CAPTIONS))}
    return {
        "frames": torch.randn(b, NF, 3, S, S, generator=gen),
        "video_mask": video_mask,
        "input_ids": ids,
        "text_mask": mask,
        "caption_key": torch.tensor([keys[c] for c in CAPTIONS]),
        "video_index": torch.arange(b),
    }


def test_vta_only_is_the_clip4clip_loss(vta_and_tokenizer, batch):
    model = _model(vta_and_tokenizer, vtm=False, sd=False)
    out = _step(model, batch)
    reference = ContrastiveObjective()(model.vta, batch)
    assert torch.equal(out["loss"], reference["loss"])
    assert torch.equal(out["logits"], reference["logits"])
    assert out["loss_vtm"].item() == 0 and out["loss_sd"].item() == 0
    assert model.fusion is None


def test_vtm_loss_uses_sampled_hard_negatives_and_is_added(vta_and_tokenizer, batch):
    model = _model(vta_and_tokenizer, vtm=True, sd=False, w_vtm=0.7)
    torch.manual_seed(11)
    out = _step(model, batch)
    # Recompute the vtm loss by hand from the same random draw.
    torch.manual_seed(11)
    text = model.encode_text(batch["input_ids"], batch["text_mask"])
    video = model.encode_video(batch["frames"], batch["video_mask"])
    logits = model.similarity(text, video)
    neg_v, neg_t = sample_hard_negatives(logits, batch["caption_key"], None, batch["video_index"])
    # Captions 1 and 3 are identical: never each other's negative.
    assert neg_v[1].item() != 3 and neg_v[3].item() != 1
    assert neg_t[1].item() != 3 and neg_t[3].item() != 1
    t_idx, v_idx, label = matching_pairs(neg_v, neg_t)
    assert len(label) == 3 * len(CAPTIONS)
    expected = vtm_loss(
        model.fusion(text.words[t_idx], text.mask[t_idx], video.frames[v_idx], video.mask[v_idx]),
        label,
    )
    torch.testing.assert_close(out["loss_vtm"], expected)
    torch.testing.assert_close(out["loss_vta"], symmetric_infonce(logits))
    torch.testing.assert_close(out["loss"], out["loss_vta"] + 0.7 * out["loss_vtm"])


def test_vtm_gradient_reaches_fusion_and_encoders(vta_and_tokenizer, batch):
    model = _model(vta_and_tokenizer, vtm=True, sd=False)
    _step(model, batch)["loss_vtm"].backward()
    assert model.fusion.head.weight.grad.abs().sum() > 0
    assert model.vta.temporal.blocks[0].mlp.fc2.weight.grad.abs().sum() > 0
    token_grad = model.vta.towers.model.text_model.embeddings.token_embedding.weight.grad
    assert token_grad.abs().sum() > 0


def test_build_model_makes_clip2tv_around_seqtransf():
    cfg = _config()
    cfg.model.kind = "clip2tv"
    model, _ = build_model(cfg.model, cfg.data)
    assert isinstance(model, Clip2TV) and isinstance(model.vta, Clip4Clip)
    assert model.vta.temporal is not None and model.fusion.width == D
    assert model.logit_scale is model.vta.towers.logit_scale


def test_param_groups_cover_every_parameter_once(vta_and_tokenizer):
    model = _model(vta_and_tokenizer, vtm=True, sd=True)
    backbone, new = model.param_groups()
    ids = [id(p) for p in backbone + new]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    fusion_ids = {id(p) for p in model.fusion.parameters()}
    assert fusion_ids <= {id(p) for p in new}
    assert id(model.logit_scale) in {id(p) for p in backbone}
    build_optimizer(model, OptimConfig())  # raises if a parameter is in neither group


def test_sd_replaces_infonce_and_ema_teacher_follows_steps(vta_and_tokenizer, batch):
    model = _model(vta_and_tokenizer, vtm=False, sd=True, sd_alpha=0.0, ema_momentum=0.5)
    out = _step(model, batch)
    # α = 0: SD is InfoNCE to the bit, and it is what the total uses.
    assert torch.equal(out["loss_sd"], out["loss_vta"])
    assert torch.equal(out["loss"], out["loss_sd"])
    teacher = model.objective.teacher
    assert isinstance(teacher, EmaTeacher)
    # The teacher is not part of the student's state or parameters (checkpoints stay the same).
    assert not any(k.startswith("_teacher") or "teacher" in k for k in model.state_dict())
    assert len(list(model.parameters())) == len(list(model.vta.parameters()))
    before = {n: p.clone() for n, p in teacher.model.named_parameters()}
    with torch.no_grad():
        model.vta.temporal.frame_position.weight.add_(1.0)
    model.objective.after_step(model)
    name = "temporal.frame_position.weight"
    student_value = model.vta.temporal.frame_position.weight
    torch.testing.assert_close(
        dict(teacher.model.named_parameters())[name], 0.5 * before[name] + 0.5 * student_value
    )

    with_teacher = _model(vta_and_tokenizer, vtm=False, sd=True, sd_alpha=0.4)
    out = _step(with_teacher, batch)
    assert out["loss_sd"].item() != pytest.approx(out["loss_vta"].item())


def test_frozen_teacher_from_config(vta_and_tokenizer, batch, tmp_path):
    vta, _ = vta_and_tokenizer
    save_checkpoint(tmp_path / "clean", vta, _config())
    model = _model(
        vta_and_tokenizer, sd=True, teacher="frozen", teacher_checkpoint=tmp_path / "clean"
    )
    assert isinstance(model.objective.teacher, FrozenTeacher)
    out = _step(model, batch)
    out["loss"].backward()
    assert all(p.grad is None for p in model.objective.teacher.model.parameters())
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        _model(vta_and_tokenizer, sd=True, teacher="frozen")


def _features(model: Clip2TV, batch):
    model.eval()
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["text_mask"])
        video = model.encode_video(batch["frames"], batch["video_mask"])
        return text, video, model.similarity(text, video)


def test_match_probability_is_blockwise_softmax_of_the_head(vta_and_tokenizer, batch, monkeypatch):
    model = _model(vta_and_tokenizer, vtm=True)
    text, video, _ = _features(model, batch)
    pairs = torch.tensor([[0, 0], [0, 3], [5, 2], [4, 4], [1, 1]])
    with torch.no_grad():
        probs = model.match_probability(text, video, pairs)
        logits = model.fusion(
            text.words[pairs[:, 0]],
            text.mask[pairs[:, 0]],
            video.frames[pairs[:, 1]],
            video.mask[pairs[:, 1]],
        )
        monkeypatch.setattr(clip2tv_module, "MATCH_BLOCK", 2)
        blocked = model.match_probability(text, video, pairs)
    torch.testing.assert_close(probs, torch.softmax(logits, -1)[:, 1])
    torch.testing.assert_close(blocked, probs)
    assert ((probs > 0) & (probs < 1)).all()


def test_rerank_with_zero_weight_is_the_vta_ranking(vta_and_tokenizer, batch):
    model = _model(vta_and_tokenizer, vtm=True)
    text, video, sim = _features(model, batch)
    gt = torch.arange(len(CAPTIONS))
    for direction in ("t2v", "v2t"):
        out = model.rerank(sim, text, video, k=3, w_rr=0.0, direction=direction)
        # Scores are vta_logit/λ exactly, so even tied candidates (captions 1 and 3 are
        # identical) keep the vta ranking.
        assert torch.equal(out, sim.double() / model.logit_scale.double().exp())
    results = rerank_results(model, sim, text, video, gt, k=3, w_rr=0.0)
    assert results["rerank"] == retrieval_metrics(sim, gt)


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
@pytest.mark.parametrize("w_rr", [5.0, -5.0])
def test_rerank_reorders_only_the_top_k_by_the_combined_score(
    vta_and_tokenizer, batch, w_rr, direction
):
    model = _model(vta_and_tokenizer, vtm=True)
    text, video, sim = _features(model, batch)
    k = 3
    out = model.rerank(sim, text, video, k=k, w_rr=w_rr, direction=direction)
    # Per query rows: text rows for t2v, video rows (sim transposed) for v2t.
    scores, out = (sim, out) if direction == "t2v" else (sim.t(), out.t())
    scale = model.logit_scale.exp().item()
    checked = 0
    for q in range(scores.shape[0]):
        vta_order = scores[q].argsort(descending=True).tolist()
        top, rest = vta_order[:k], vta_order[k:]
        if scores[q, top[-1]] == scores[q, rest[0]]:
            continue  # identical captions tie at the boundary: the top-K set is ambiguous
        pairs = [[q, c] if direction == "t2v" else [c, q] for c in top]
        with torch.no_grad():
            p = model.match_probability(text, video, torch.tensor(pairs))
        combined = {c: scores[q, c].item() / scale + w_rr * p[i].item() for i, c in enumerate(top)}
        expected = sorted(top, key=lambda c: -combined[c])
        assert out[q].argsort(descending=True).tolist()[:k] == expected
        for c in top:
            assert out[q, c].item() == pytest.approx(combined[c], rel=1e-6)
        # Beyond the top-K: vta order, strictly below every re-ranked candidate.
        assert out[q, rest].tolist() == sorted(out[q, rest].tolist(), reverse=True)
        assert out[q, top].min() > out[q, rest].max()
        checked += 1
    assert checked >= 4


def test_fusion_ignores_padding_and_tells_modalities_apart():
    torch.manual_seed(3)
    fusion = FusionTransformer(D, layers=2, heads=4).eval()
    words, frames = torch.randn(2, NW, D), torch.randn(2, NF, D)
    word_mask = torch.arange(NW)[None, :] < torch.tensor([[3], [NW]])
    frame_mask = torch.arange(NF)[None, :] < torch.tensor([[NF], [1]])
    with torch.no_grad():
        logits = fusion(words, word_mask, frames, frame_mask)
        noisy_words = words + 5 * torch.randn_like(words) * ~word_mask[..., None]
        noisy_frames = frames + 5 * torch.randn_like(frames) * ~frame_mask[..., None]
        assert torch.allclose(
            fusion(noisy_words, word_mask, noisy_frames, frame_mask), logits, atol=1e-6
        )
        # Same tokens, modalities swapped: the type embedding makes the result differ.
        ones_f = torch.ones(2, NF, dtype=torch.bool)
        a = fusion(words[:, :NF], ones_f, frames, ones_f)
        b = fusion(frames, ones_f, words[:, :NF], ones_f)
        assert not torch.allclose(a, b, atol=1e-4)
        assert logits.shape == (2, 2)


def test_evaluate_with_rerank_reports_vta_and_reranked_numbers(vta_and_tokenizer, tmp_path):
    generate(
        tmp_path,
        n_train=0,
        n_test=6,
        n_long=0,
        size=16,
        duration=3.0,
        fps=2.0,
        workers=1,
        order_share=0,
        attribute_share=0,
    )
    data_cfg = DataConfig(
        dataset="synthetic", root=tmp_path, num_frames=NF, max_words=NW, image_size=S, num_workers=0
    )
    records = read_dataset(data_cfg, "test")
    _, tokenizer = vta_and_tokenizer
    model = _model(vta_and_tokenizer, vtm=True)
    eval_cfg = EvalConfig(dsl=False)
    plain = evaluate(model, records, tokenizer, data_cfg, eval_cfg)
    unweighted = evaluate_with_rerank(model, records, tokenizer, data_cfg, eval_cfg, k=3, w_rr=0.0)
    assert unweighted["raw"] == plain["raw"]
    assert unweighted["rerank"] == plain["raw"]
    weighted = evaluate_with_rerank(model, records, tokenizer, data_cfg, eval_cfg, k=3, w_rr=50.0)
    assert weighted["raw"] == plain["raw"]
    assert weighted["rerank_k"] == 3 and weighted["w_rr"] == 50.0
    # Re-ranking only permutes each query's top 3: a ground truth inside it stays inside it.
    for direction in ("t2v", "v2t"):
        assert weighted["rerank"][f"{direction}/R@5"] == plain["raw"][f"{direction}/R@5"]


# ---------------------------------------------------------------- two processes (gloo)

WORLD, DIST_B, DIST_VOCAB = 2, 8, 40


class _LinearTowers(nn.Module):
    """Tiny stand-in for ClipTowers (no transformers import in the spawned processes)."""

    embed_dim = D

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(3 * 4 * 4, D)
        self.token = nn.Embedding(DIST_VOCAB, D)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image(pixels.flatten(1))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):
        words = torch.tanh(self.token(ids)).cumsum(dim=1)
        return words[torch.arange(ids.shape[0]), mask.sum(1) - 1], words


def _dist_model() -> Clip2TV:
    torch.manual_seed(0)
    vta = Clip4Clip(_LinearTowers(), TemporalEncoder(D, heads=4, layers=1, max_positions=NF))
    cfg = Clip2TVConfig(vtm_layers=1, vtm_heads=4, w_vtm=0.5, sd=True, sd_alpha=0.4)
    model = Clip2TV(vta, D, cfg).double()
    model.objective = Clip2TVObjective(cfg)
    return model


def _dist_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    frame_len = torch.tensor([3, 1, 2, 3, 2, 3, 1, 3])
    word_len = torch.tensor([5, 3, 2, 4, 5, 2, 3, 4])
    return {
        "frames": torch.randn(DIST_B, NF, 3, 4, 4, generator=g, dtype=torch.float64),
        "video_mask": torch.arange(NF)[None, :] < frame_len[:, None],
        "input_ids": torch.randint(1, DIST_VOCAB, (DIST_B, 5), generator=g),
        "text_mask": torch.arange(5)[None, :] < word_len[:, None],
        # Items 1 and 6 share a caption; items 2 and 5 are two captions of one video.
        "caption_key": torch.tensor([0, 1, 2, 3, 4, 5, 1, 7]),
        "video_index": torch.tensor([0, 1, 2, 3, 4, 2, 6, 7]),
    }


def _loss_and_grads(model: Clip2TV, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)  # the same negatives are drawn in every process
    out = _step(model, batch)
    out["loss"].backward()
    result = {"loss": out["loss"].detach(), "loss_vtm": out["loss_vtm"].detach()}
    for name, p in model.named_parameters():
        result[name] = p.grad.detach().clone()
    if dist.is_initialized():  # DDP's reduction: average over processes
        for tensor in result.values():
            dist.all_reduce(tensor)
            tensor /= dist.get_world_size()
    return result


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    half = DIST_B // WORLD
    local = {k: v[rank * half : (rank + 1) * half] for k, v in _dist_batch().items()}
    torch.save(_loss_and_grads(_dist_model(), local), Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_give_the_single_process_loss_and_gradients(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    want = _loss_and_grads(_dist_model(), _dist_batch())
    assert want["loss_vtm"] > 0
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == want.keys()
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, atol=1e-9, rtol=1e-7, msg=name)
