"""Retrieval models: CLIP4Clip (meanP, seqTransf), X-CLIP, CLIP2TV, VideoCLIP."""

from vtrkit.models.base import RetrievalModel, TextFeatures, VideoFeatures
from vtrkit.models.build import build_model
from vtrkit.models.meanpool import Clip4Clip
from vtrkit.models.xclip import XClip

__all__ = [
    "Clip4Clip",
    "RetrievalModel",
    "TextFeatures",
    "VideoFeatures",
    "XClip",
    "build_model",
]
