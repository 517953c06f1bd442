"""vtrkit: text-video retrieval (CLIP4Clip, X-CLIP, CLIP2TV, VideoCLIP) and video search.

Public API: :func:`load_model`, :func:`encode_videos`, :func:`encode_texts`, :func:`similarity`,
:class:`VideoIndex`, :func:`load_config`, :class:`FrameSampling`. Heavier pieces live in their
packages (``vtrkit.models``, ``vtrkit.train``, ``vtrkit.eval``, ``vtrkit.index``,
``vtrkit.videoclip``).
"""

from vtrkit.api import encode_texts, encode_videos, load_model, similarity
from vtrkit.config import Config, load_config
from vtrkit.data.sampling import FrameSampling
from vtrkit.index.search import VideoIndex
from vtrkit.models.base import TextFeatures, VideoFeatures

__version__ = "0.1.0"

__all__ = [
    "Config",
    "FrameSampling",
    "TextFeatures",
    "VideoFeatures",
    "VideoIndex",
    "encode_texts",
    "encode_videos",
    "load_config",
    "load_model",
    "similarity",
]
