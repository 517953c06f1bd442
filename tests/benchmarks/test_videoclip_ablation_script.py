"""benchmarks/videoclip_ablation.py end to end on tiny settings: arms, batch diagnostics, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ablation_helpers import load_script
from safetensors.torch import load_file

from vtrkit.videoclip.train import run_videoclip

FULL, RANDOM = "full VideoCLIP", "without retrieval augmentation"


def test_group_statistics_by_hand():
    script = load_script("videoclip_ablation")
    text = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    video = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    topic = np.array([0, 0, 1])
    stats = script.group_statistics([np.array([0, 1, 2])], text, video, topic)
    # text_i · video_j for i != j: 0, 1, 0, 0, 2, 3 -> mean 1; same-topic pairs: 2 of 6.
    assert stats == {"neg_sim": pytest.approx(1.0), "same_topic": pytest.approx(1 / 3)}


def test_arms_diagnostics_and_report(tmp_path):
    script = load_script("videoclip_ablation")
    out = tmp_path / "out"
    argv = [
        "--out", str(out),
        "--random-backbone",
        "--seeds", "0",
        "--steps", "5",
        "--n-long", "10",
        "--topics", "2",
        "--long-duration", "24",
        "--cluster-k", "2",
        "--hidden", "16",
        "--layers", "1",
        "--pairs", "4",
        "--arms", FULL, RANDOM,
        "--set", "model.videoclip.loc_window=16",
        "--threads", "1",
        "--device", "cpu",
    ]  # fmt: skip
    report = script.main(argv)
    runs = report["runs"]
    assert list(runs) == [FULL, RANDOM]
    # 8 training videos in groups of 2 with one group per step: 4 steps per epoch, 5 steps.
    for arm in (FULL, RANDOM):
        run = runs[arm][0]
        assert run["steps"] == 5 and run["epochs"] == 1
        assert [d["epoch"] for d in run["diagnostics"]] == [0, 1]
        for record in run["diagnostics"]:
            assert 0 < record["coverage"] <= 1
            assert 0 <= record["same_topic/retrieved"] <= 1
    # Random groups cut a permutation: every training video is in exactly one group.
    assert [d["coverage"] for d in runs[RANDOM][0]["diagnostics"]] == [1.0, 1.0]
    # Same seed, same initial model: the first epoch's retrieved and random statistics agree.
    first = [runs[arm][0]["diagnostics"][0] for arm in (FULL, RANDOM)]
    for key in ("neg_sim/retrieved", "neg_sim/random", "pos_sim"):
        assert first[0][key] == pytest.approx(first[1][key])
    metrics = runs[FULL][0]["metrics"]
    assert {"t2v/R@1", "v2t/R@5", "para/R@1", "loc/frame_acc"} <= set(metrics)
    summary = report["summary"]
    assert summary[FULL]["seg. v2t R@1"]["values"] == [metrics["v2t/R@1"]]
    text = (out / "videoclip_ablation.md").read_text()
    assert f"| {FULL} |" in text and "neg_sim/retrieved" in text
    assert json.loads((out / "videoclip_ablation.json").read_text())["summary"] == summary

    # The diagnostic source trains exactly as the library's VideoCLIP training does.
    args = script.parse_args(argv)
    long_dir = out / "data" / "long"
    feats = next(out.glob("features-*"))
    cfg = script.arm_config(args, script.ArmStore(out), FULL, 0, long_dir, feats, 128)
    cfg.train.output_dir = tmp_path / "library"
    _, library = run_videoclip(cfg, device="cpu")
    assert library["t2v/R@1"] == metrics["t2v/R@1"] and library["v2t/R@1"] == metrics["v2t/R@1"]
    ours = load_file(out / "runs" / "full_videoclip" / "seed0" / "last" / "model.safetensors")
    theirs = load_file(tmp_path / "library" / "last" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
