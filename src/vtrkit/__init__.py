"""vtrkit: text-video retrieval (CLIP4Clip, X-CLIP, CLIP2TV, VideoCLIP) and video search."""

__version__ = "0.1.0"
