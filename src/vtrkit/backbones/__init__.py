"""CLIP towers on Hugging Face transformers, checkpoint readers and tokenizers."""

from vtrkit.backbones.checkpoints import CheckpointFormat, detect_format, load_clip_model
from vtrkit.backbones.clip import ClipTowers, build_clip, clip_from_arch
from vtrkit.backbones.convert import CheckpointError, hf_to_openai, infer_arch, openai_to_hf
from vtrkit.backbones.tokenizer import ClipTokenizer, HFTokenizerAdapter, Tokenizer, load_tokenizer

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "ClipTokenizer",
    "ClipTowers",
    "HFTokenizerAdapter",
    "Tokenizer",
    "build_clip",
    "clip_from_arch",
    "detect_format",
    "hf_to_openai",
    "infer_arch",
    "load_clip_model",
    "load_tokenizer",
    "openai_to_hf",
]
