"""benchmarks/clip2tv_ablation.py end to end on tiny settings: arms, diagnostics, JSON, table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ablation_helpers import TINY_SHORT_VIDEO, load_script
from safetensors.torch import load_file

from vtrkit.train.pipeline import train_run


def test_mean_off_diagonal_cosine_by_hand():
    script = load_script("clip2tv_ablation")
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # Pairs (0,1): 0, (0,2) and (1,2): 1/sqrt(2); each counted in both orders.
    assert script.mean_off_diagonal_cosine(x) == pytest.approx(2 / math.sqrt(2) / 3)
    assert script.mean_off_diagonal_cosine(torch.ones(4, 3)) == pytest.approx(1.0)


def test_arms_diagnostics_and_report(tmp_path):
    script = load_script("clip2tv_ablation")
    out = tmp_path / "out"
    argv = [
        "--out", str(out),
        "--n-train", "12",
        "--n-test", "10",
        "--batch", "4",
        "--steps", "2",
        "--seeds", "0",
        "--diag-every", "1",
        "--arms", "vta+vtm", script.FROZEN,
        "--set", "model.clip2tv.vtm_layers=1",
        "--set", "model.clip2tv.vtm_heads=2",
        *TINY_SHORT_VIDEO,
    ]  # fmt: skip
    report = script.main(argv)
    runs = report["runs"]
    assert list(runs) == [script.TEACHER, "vta+vtm", script.FROZEN]  # the teacher comes first

    # The teacher trains on the clean twin of the vague annotations (same videos).
    vague = json.loads((out / "data" / "MSRVTT_data.json").read_text())["sentences"]
    clean = json.loads((out / "data_clean" / "MSRVTT_data.json").read_text())["sentences"]
    assert sum("clean_caption" in s for s in vague) == round(0.3 * 12)
    assert [s["caption"] for s in clean] == [s.get("clean_caption", s["caption"]) for s in vague]

    # Diagnostics at every step of the CLIP2TV arms, none for the plain seqTransf teacher.
    assert not runs[script.TEACHER][0]["diagnostics"]
    vtm = runs["vta+vtm"][0]["diagnostics"]
    assert [r["step"] for r in vtm] == [0, 1]
    for record in vtm:
        assert record["grad_norm/vta"] > 0 and record["grad_norm/vtm"] > 0
        assert "grad_norm/sd" not in record and record["loss_sd"] == 0
        assert -1 <= record["grad_cos/vta-vtm"] <= 1
        assert -1 <= record["offdiag_cos/video"] <= 1 and -1 <= record["offdiag_cos/text"] <= 1
    frozen = runs[script.FROZEN][0]["diagnostics"]
    # 12 videos at batch 4: 3 steps per epoch. α ramps 0, 0.4/3, ...; at α = 0 SD is InfoNCE,
    # so its loss and its encoder gradient are vta's.
    assert [r["alpha"] for r in frozen] == pytest.approx([0.0, 0.4 / 3])
    assert frozen[0]["loss_sd"] == pytest.approx(frozen[0]["loss_vta"], rel=1e-6)
    assert frozen[0]["grad_norm/sd"] == pytest.approx(frozen[0]["grad_norm/vta"], rel=1e-5)
    assert frozen[1]["loss_sd"] != pytest.approx(frozen[1]["loss_vta"], rel=1e-6)

    # Rows: vta ranking for every arm, vtm re-ranked for the arms with a matching head.
    summary = report["summary"]
    assert set(summary) == {
        f"{script.TEACHER}, vta ranking",
        "vta+vtm, vta ranking",
        "vta+vtm, vtm re-ranked (top 16)",
        f"{script.FROZEN}, vta ranking",
        f"{script.FROZEN}, vtm re-ranked (top 16)",
    }
    reranked = runs["vta+vtm"][0]["metrics"]["rerank"]
    assert summary["vta+vtm, vtm re-ranked (top 16)"]["v2t R@1"]["values"] == [reranked["v2t/R@1"]]
    diag = report["diagnostics"]
    assert diag["vta+vtm @ step 0 (first)"]["grad_norm/vtm"]["values"] == [vtm[0]["grad_norm/vtm"]]
    text = (out / "clip2tv_ablation.md").read_text()
    assert "| vta+vtm, vtm re-ranked (top 16) |" in text and "grad_cos/vta-vtm" in text

    # Recording diagnostics does not change training: the same arm through train_run alone.
    args = script.parse_args(argv)
    cfg = script.arm_config(args, script.ArmStore(out), "vta+vtm", 0)
    cfg.train.output_dir = tmp_path / "plain"
    plain = train_run(cfg, device="cpu", progress=False).last_eval
    assert plain["raw"] == runs["vta+vtm"][0]["metrics"]["raw"]
    assert plain["rerank"] == reranked
    weights = load_file(out / "runs" / "vta_vtm" / "seed0" / "last" / "model.safetensors")
    alone = load_file(tmp_path / "plain" / "last" / "model.safetensors")
    assert weights.keys() == alone.keys()
    assert all(torch.equal(weights[k], alone[k]) for k in weights)
