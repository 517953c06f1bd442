"""Load the benchmark scripts and shrink them for tests: tiny random towers, tiny data, few steps."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY_TOWERS = (
    "model.backbone.arch={embed_dim: 16, image_size: 16, patch_size: 8, vision_width: 16, "
    "vision_layers: 1, vision_heads: 2, text_width: 16, text_layers: 1, text_heads: 2}"
)
TINY_SHORT_VIDEO = [
    "--random-backbone",
    "--set",
    TINY_TOWERS,
    "--set",
    "data.image_size=16",
    "--set",
    "data.num_frames=3",
    "--set",
    "data.max_words=12",
    "--set",
    "model.temporal_layers=1",
    "--set",
    "model.temporal_heads=2",
    "--threads",
    "1",
    "--device",
    "cpu",
]
"""Options that make a short-video ablation script tiny (add --out, data sizes, arms)."""


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the scripts import their shared helpers by name)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)
