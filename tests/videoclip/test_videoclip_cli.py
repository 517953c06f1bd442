"""From real video files to a trained, evaluated VideoCLIP through the three commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer
import yaml
from typer.testing import CliRunner

from vtrkit.backbones import clip_from_arch
from vtrkit.cli.videoclip import register
from vtrkit.config import ClipArch
from vtrkit.data.decode import read_sampled_frames
from vtrkit.data.sampling import FrameSampling
from vtrkit.data.synthetic import generate
from vtrkit.data.transforms import to_model_input
from vtrkit.videoclip.features import (
    ClipSecondExtractor,
    load_features,
    read_index,
    save_features,
    write_index,
)

ARCH = {
    "embed_dim": 16,
    "image_size": 32,
    "patch_size": 16,
    "vision_width": 32,
    "vision_layers": 1,
    "vision_heads": 2,
    "text_width": 16,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 16,
    "vocab_size": 49408,  # build_clip checks the table against the bundled CLIP vocabulary
}


def test_clip_extractor_gives_one_row_per_second(tmp_path: Path):
    generate(tmp_path, n_train=0, n_test=0, n_long=2, seed=1, long_duration=14.0, workers=1)
    video = tmp_path / "long" / "videos" / "long0000.mp4"
    torch.manual_seed(0)
    towers = clip_from_arch(ClipArch(**ARCH))
    # A 5-second chunk forces several decoding windows, whose rows must line up with time.
    feats = ClipSecondExtractor(towers, chunk_seconds=5)(video)
    frames, times, _ = read_sampled_frames(video, FrameSampling(100, 1.0, 32))
    assert feats.shape == (14, 16) and [int(t) for t in times] == list(range(14))
    with torch.no_grad():
        direct = towers.encode_image(to_model_input(frames)).numpy()
    assert np.allclose(feats, direct, atol=1e-5)


def test_features_train_and_eval_commands(tmp_path: Path):
    generate(tmp_path / "syn", n_train=0, n_test=0, n_long=6, seed=1, long_duration=20.0, workers=1)
    videos = tmp_path / "syn" / "long" / "videos"
    (videos / "broken.mp4").write_bytes(b"this is not a video")
    feats, run = tmp_path / "feats", tmp_path / "run"
    config = tmp_path / "videoclip.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "dataset": "youcook2",
                    "root": str(tmp_path / "syn" / "long"),
                    "val_split": "val",
                },
                "model": {
                    "kind": "videoclip",
                    "backbone": {"arch": ARCH},
                    "videoclip": {
                        "features": str(feats),
                        "d_in": 16,
                        "hidden": 32,
                        "heads": 4,
                        "text_layers": 1,
                        "video_layers": 1,
                        "cluster_k": 2,
                        "pairs_per_video": 4,
                        "text_clip_tokens": [4, 12],
                    },
                },
                "optim": {"lr_new": 1e-3, "weight_decay": 0.0},
                "train": {
                    "output_dir": str(run),
                    "batch_size": 2,
                    "epochs": 2,
                    "eval_every_epoch": False,
                    "log_every": 1,
                },
            }
        )
    )
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    result = runner.invoke(app, ["features", str(videos), str(feats), "--config", str(config)])
    assert result.exit_code == 0, result.output
    index = read_index(feats)
    assert len(index) == 7 and sum(e.ok for e in index.values()) == 6
    assert index["broken"].status == "failed" and "broken.mp4" in index["broken"].error
    assert load_features(feats, "long0003").shape == (20, 16)
    # A second run has nothing left to do.
    again = runner.invoke(app, ["features", str(videos), str(feats), "--config", str(config)])
    assert "extracted=0" in again.output and "skipped=7" in again.output

    result = runner.invoke(app, ["videoclip-train", str(config)])
    assert result.exit_code == 0, result.output
    assert (run / "last").is_dir() and (run / "tokenizer" / "tokenizer.json").is_file()
    per_epoch = int(_steps_line(result.output).split()[0]) // 2
    # --resume continues from last/ (2 epochs done): one more epoch's steps.
    more = ["--set", "train.epochs=3", "--resume"]
    result = runner.invoke(app, ["videoclip-train", str(config), *more])
    assert result.exit_code == 0, result.output
    assert _steps_line(result.output).startswith(f"{3 * per_epoch} steps")
    logged = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged if "loss" in r]
    assert steps == list(range(1, 3 * per_epoch + 1))
    # Features re-extracted differently under the same ids: the checkpoint is refused, clearly.
    changed = tmp_path / "feats2"
    changed.mkdir()
    entries = {}
    for vid, entry in read_index(feats).items():
        if entry.ok:
            rows = np.asarray(load_features(feats, vid), dtype=np.float32)
            entries[vid] = save_features(changed, vid, rows[:15] if vid == "long0003" else rows)
    write_index(changed, entries)
    moved = ["--set", f"model.videoclip.features={changed}", "--set", "train.epochs=4"]
    result = runner.invoke(app, ["videoclip-train", str(config), *moved, "--resume"])
    assert result.exit_code == 2
    assert f"checkpoint {run / 'last'}" in result.output
    assert "'long0003' (seconds 20 -> 15" in result.output

    out_json = tmp_path / "eval.json"
    result = runner.invoke(
        app, ["videoclip-eval", str(run), "--split", "train", "--json", str(out_json)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out_json.read_text())
    assert 0.0 <= metrics["loc/frame_acc"] <= 100.0 and metrics["t2v/R@1"] >= 0.0


def _steps_line(output: str) -> str:
    """The "N steps in S s" summary (progress bars may come before it on the same line)."""
    import re

    return re.search(r"\d+ steps in .*", output).group(0)
