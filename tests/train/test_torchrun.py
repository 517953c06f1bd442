"""A 2-process torchrun run (gloo, CPU) trains and evaluates end to end on generated videos."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vtrkit.data.synthetic import generate

TINY = {
    "name": "ddp-smoke",
    "data": {
        "dataset": "synthetic",
        "num_frames": 4,
        "max_words": 16,
        "image_size": 32,
        "num_workers": 0,
    },
    "model": {
        "kind": "xclip",
        "temporal_layers": 1,
        "temporal_heads": 2,
        "backbone": {
            "arch": {
                "embed_dim": 32,
                "image_size": 32,
                "patch_size": 16,
                "vision_width": 32,
                "vision_layers": 1,
                "vision_heads": 2,
                "text_width": 32,
                "text_layers": 1,
                "text_heads": 2,
            }
        },
    },
    "optim": {"lr_backbone": 1e-3, "lr_new": 1e-3},
    "train": {"epochs": 2, "batch_size": 8, "log_every": 1},
}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, n_train=16, n_test=8, n_long=0, seed=3, workers=1)
    return root


def test_torchrun_two_processes_train_and_evaluate(tiny_set: Path, tmp_path: Path):
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(tiny_set)
    cfg["data"]["frame_cache"] = str(tmp_path / "cache")
    cfg["train"]["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vtrkit",
        "train",
        str(path),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    # 16 pairs / global batch 8 = 2 steps per epoch, 2 epochs; each logged once by rank 0 only.
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert len(evals) == 2
    assert evals[-1]["eval"]["num_videos"] == 8 and evals[-1]["eval"]["num_texts"] == 8
    assert 0 <= evals[-1]["eval"]["raw"]["t2v/R@1"] <= 100
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "last" / "state.pt").is_file()
    assert "final evaluation" in proc.stdout
