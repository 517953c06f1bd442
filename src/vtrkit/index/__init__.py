"""Index and search a video collection: catalog (SQLite), feature store, ANN, search + re-rank.

An index is a folder (``catalog.sqlite``, ``features/``, ``ann.faiss``) built once with a model and
searched by text, by example video, or video→text. See :class:`VideoIndex`.
"""

from vtrkit.index.build.incremental import BuildReport, build_index, collect_videos
from vtrkit.index.results import Moment, VideoHit
from vtrkit.index.search import CaptionMatch, SearchResult, VideoIndex
from vtrkit.index.storage.ann import AnnConfig, AnnIndex
from vtrkit.index.storage.catalog import CatalogError
from vtrkit.index.storage.library import IndexMismatchError, IndexSettings
from vtrkit.inference import (
    Encoder,
    ModelEncoder,
    load_backbone_for_index,
    load_model_for_index,
)

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
    "Moment",
    "SearchResult",
    "VideoHit",
    "VideoIndex",
    "build_index",
    "collect_videos",
    "load_backbone_for_index",
    "load_model_for_index",
]
