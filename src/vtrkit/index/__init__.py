"""Index and search a video collection: catalog (SQLite), feature store, ANN, search + re-rank.

An index is a folder (``catalog.sqlite``, ``features/``, ``ann.faiss``) built once with a model and
searched by text, by example video, or video→text. See :class:`VideoIndex`.
"""

from vtrkit.index.ann import AnnConfig, AnnIndex
from vtrkit.index.builder import BuildReport, build_index, collect_videos
from vtrkit.index.catalog import CatalogError
from vtrkit.index.encoder import (
    Encoder,
    ModelEncoder,
    load_backbone_for_index,
    load_model_for_index,
)
from vtrkit.index.library import IndexMismatchError, IndexSettings
from vtrkit.index.search import CaptionMatch, SearchResult, VideoIndex

__all__ = [
    "AnnConfig",
    "AnnIndex",
    "BuildReport",
    "CaptionMatch",
    "CatalogError",
    "Encoder",
    "IndexMismatchError",
    "IndexSettings",
    "ModelEncoder",
    "SearchResult",
    "VideoIndex",
    "build_index",
    "collect_videos",
    "load_backbone_for_index",
    "load_model_for_index",
]
