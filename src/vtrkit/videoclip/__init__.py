"""VideoCLIP (SPEC §3): a dual encoder over pre-extracted per-second video features.

Modules: ``features`` (the on-disk array format and extraction), ``sampler`` (overlapping
positive pairs), ``batcher`` (retrieval-augmented batches), ``model`` (token MLP and the two
BERT-style transformers), ``data`` (tokenizer, narrated videos, pair batches), ``train`` (the
training loop) and ``zeroshot`` (retrieval, multiple-choice QA, step localisation).
"""

from vtrkit.videoclip.features import FeatureEntry, extract_features, load_features, read_index
from vtrkit.videoclip.model import VideoClipModel, build_videoclip
from vtrkit.videoclip.sampler import ClipPair, SamplerSettings, sample_pair
from vtrkit.videoclip.train import load_videoclip, run_videoclip, train_videoclip
from vtrkit.videoclip.zeroshot import evaluate_zero_shot

__all__ = [
    "ClipPair",
    "FeatureEntry",
    "SamplerSettings",
    "VideoClipModel",
    "build_videoclip",
    "evaluate_zero_shot",
    "extract_features",
    "load_features",
    "load_videoclip",
    "read_index",
    "run_videoclip",
    "sample_pair",
    "train_videoclip",
]
