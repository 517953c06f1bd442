"""A tiny pretraining config shared by the pretraining tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vtrkit.config import Config, config_from_dict

# Four heads on width 32: not width // 64, so an export that forgot the head count would load
# into a different model.
TINY_ARCH = {
    "embed_dim": 32,
    "image_size": 32,
    "patch_size": 16,
    "vision_width": 32,
    "vision_layers": 1,
    "vision_heads": 4,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 4,
}


def tiny_config(out: Path, **sections: dict[str, Any]) -> Config:
    """A pretraining Config of the tiny towers writing to ``out``; ``sections`` update it."""
    data: dict[str, Any] = {
        "name": "pretrain-test",
        "data": {"num_frames": 4, "max_words": 16, "image_size": 32, "num_workers": 0},
        "model": {"backbone": {"arch": dict(TINY_ARCH)}},
        "optim": {"lr_backbone": 1e-3, "lr_new": 1e-3, "warmup": 0.2},
        "train": {"output_dir": str(out), "epochs": 2, "batch_size": 16, "log_every": 1},
        "pretrain": {
            "images_per_epoch": 48,
            "zero_shot_images": 24,
            "probe_train": 40,
            "probe_test": 30,
            "twin_pairs": 10,
            "zero_shot_video": False,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, "tiny pretraining test config")
