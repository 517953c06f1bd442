"""An index folder on disk: its catalog, feature store, settings and ANN, opened together.

Layout: ``catalog.sqlite`` (videos, windows, thumbnails, settings), ``features/`` (the feature
store), ``ann.faiss`` + ``ann.json`` (the nearest-neighbour index and the catalog generation it
reflects). The ANN is derived data: when it is missing or older than the catalog it is brought up
to date by diffing its ids against the catalog's live rows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtrkit.index.ann import AnnConfig, AnnIndex, needs_rebuild
from vtrkit.index.catalog import Catalog, CatalogError
from vtrkit.index.store import FeatureStore

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
FEATURES_DIR = "features"
ANN_FILE = "ann.faiss"
ANN_STATE_FILE = "ann.json"


class IndexMismatchError(RuntimeError):
    """The index was built with another model (or other settings) than the one given."""


@dataclass(frozen=True)
class IndexSettings:
    """What every window of an index was encoded with; fixed when the index is created."""

    fingerprint: str
    dim: int
    num_frames: int
    image_size: int
    fps: float
    window_length: float
    window_stride: float
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "custom"})
    """How to rebuild the encoder: {"kind": "checkpoint"|"backbone", "path": ...} or custom."""

    def to_meta(self) -> dict[str, str]:
        data = asdict(self)
        data["source"] = json.dumps(self.source, sort_keys=True)
        return {k: str(v) for k, v in data.items()}

    @classmethod
    def from_meta(cls, meta: dict[str, str], where: Path) -> IndexSettings:
        try:
            return cls(
                fingerprint=meta["fingerprint"],
                dim=int(meta["dim"]),
                num_frames=int(meta["num_frames"]),
                image_size=int(meta["image_size"]),
                fps=float(meta["fps"]),
                window_length=float(meta["window_length"]),
                window_stride=float(meta["window_stride"]),
                source=json.loads(meta.get("source", '{"kind": "custom"}')),
            )
        except (KeyError, ValueError) as exc:
            raise CatalogError(
                f"{where}: the catalog's settings are incomplete ({exc}); the build that created "
                "it did not finish its first step, delete the folder and build again"
            ) from exc

    def describe_source(self) -> str:
        kind = self.source.get("kind")
        if kind in ("checkpoint", "backbone"):
            return f"{kind} {self.source.get('path')}"
        return "a custom encoder"


def describe_encoder(encoder: Any) -> str:
    source = getattr(encoder, "source", None) or {}
    if source.get("kind") in ("checkpoint", "backbone"):
        return f"{source['kind']} {source.get('path')}"
    return type(encoder).__name__


def check_encoder(settings: IndexSettings, encoder: Any, folder: Path) -> None:
    """Raise :class:`IndexMismatchError` unless ``encoder`` is the model the index was built with."""
    found = encoder.fingerprint()
    if found != settings.fingerprint:
        raise IndexMismatchError(
            f"index {folder} was built with model fingerprint {settings.fingerprint} "
            f"({settings.describe_source()}), but the model given has fingerprint {found} "
            f"({describe_encoder(encoder)}). Use the checkpoint the index was built with, or "
            f"rebuild the index with this one (vtrkit index build ... -o {folder})."
        )
    for name in ("num_frames", "image_size"):
        if int(getattr(encoder, name)) != int(getattr(settings, name)):
            raise IndexMismatchError(
                f"index {folder} uses {name}={getattr(settings, name)} but the encoder uses "
                f"{getattr(encoder, name)}; rebuild the index or use matching settings"
            )


class Library:
    """The opened parts of one index folder."""

    def __init__(self, folder: Path, catalog: Catalog, settings: IndexSettings, writable: bool):
        self.folder = folder
        self.catalog = catalog
        self.settings = settings
        self.writable = writable
        self.store = FeatureStore(
            folder / FEATURES_DIR,
            settings.dim,
            settings.num_frames,
            catalog.committed_rows,
            writable,
        )
        self._ann: AnnIndex | None = None
        self._ann_generation = -1

    @classmethod
    def open(cls, folder: str | Path, writable: bool = False) -> Library:
        """Open an existing index folder (read-only unless ``writable``)."""
        folder = Path(folder)
        path = folder / CATALOG_FILE
        if not path.is_file():
            raise CatalogError(
                f"{folder} is not a vtrkit index ({CATALOG_FILE} missing); create it with "
                f"`vtrkit index build VIDEOS -o {folder}`"
            )
        catalog = Catalog(path, readonly=not writable)
        settings = IndexSettings.from_meta(catalog.meta(), path)
        return cls(folder, catalog, settings, writable)

    @classmethod
    def create(cls, folder: str | Path, settings: IndexSettings) -> Library:
        """Create a new index folder, or open an existing one built with identical settings."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(folder / CATALOG_FILE)
        if catalog.get_meta("fingerprint") is None:
            catalog.set_meta(settings.to_meta())
            return cls(folder, catalog, settings, writable=True)
        existing = IndexSettings.from_meta(catalog.meta(), folder / CATALOG_FILE)
        if existing.fingerprint != settings.fingerprint:
            catalog.close()
            raise IndexMismatchError(
                f"index {folder} was built with model fingerprint {existing.fingerprint} "
                f"({existing.describe_source()}); this build uses {settings.fingerprint} "
                f"({json.dumps(settings.source)}). Build into a new folder (-o), or delete "
                f"{folder} to rebuild it with the new model."
            )
        if (existing.window_length, existing.window_stride) != (
            settings.window_length,
            settings.window_stride,
        ):
            catalog.close()
            raise IndexMismatchError(
                f"index {folder} uses windows of {existing.window_length} s every "
                f"{existing.window_stride} s, this build asks for {settings.window_length} s "
                f"every {settings.window_stride} s; keep the index's values or build a new index"
            )
        return cls(folder, catalog, existing, writable=True)

    def close(self) -> None:
        self.catalog.close()

    def refresh(self) -> bool:
        """Pick up commits made by another process (e.g. ``index add`` while serving)."""
        rows = self.catalog.committed_rows
        if rows == self.store.rows:
            return False
        self.store = FeatureStore(
            self.folder / FEATURES_DIR,
            self.settings.dim,
            self.settings.num_frames,
            rows,
            self.writable,
        )
        return True

    # -- ANN ----------------------------------------------------------------------------------

    def ann(self, config: AnnConfig = AnnConfig()) -> AnnIndex:
        """The ANN over all live windows, brought up to date with the catalog when needed."""
        generation = self.catalog.generation
        if self._ann is not None and self._ann_generation == generation:
            return self._ann
        self.refresh()
        ann = self._load_ann(generation)
        if ann is None:
            ann = self._sync_ann(config)
            if self.writable:
                ann.save(self.folder / ANN_FILE)
                self._write_ann_state(generation)
        self._ann, self._ann_generation = ann, generation
        return ann

    def _load_ann(self, generation: int) -> AnnIndex | None:
        state_path = self.folder / ANN_STATE_FILE
        ann_path = self.folder / ANN_FILE
        if not (state_path.is_file() and ann_path.is_file()):
            return None
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            return None
        if state.get("generation") != generation:
            return None
        return AnnIndex.load(ann_path)

    def _write_ann_state(self, generation: int) -> None:
        tmp = self.folder / (ANN_STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"generation": generation}))
        os.replace(tmp, self.folder / ANN_STATE_FILE)

    def _sync_ann(self, config: AnnConfig) -> AnnIndex:
        live = self.catalog.live_rows()
        ann_path = self.folder / ANN_FILE
        ann = AnnIndex.load(ann_path) if ann_path.is_file() else None
        if ann is not None and (
            ann.dim != self.settings.dim or needs_rebuild(ann, len(live), config)
        ):
            ann = None
        if ann is None:
            log.info("building the ANN over %d windows", len(live))
            return AnnIndex.build_from(
                lambda pos: self.store.pooled(live[pos]), live, self.settings.dim, config
            )
        have = ann.ids()
        stale = np.setdiff1d(have, live, assume_unique=True)
        new = np.setdiff1d(live, have, assume_unique=True)
        ann.remove(stale)
        ann.add(self._pooled(new), new)
        log.info("ANN updated: %d windows added, %d removed", len(new), len(stale))
        return ann

    def _pooled(self, rows: np.ndarray) -> np.ndarray:
        """Pooled features of ``rows`` as float32 [n, D]."""
        return self.store.pooled(rows).astype(np.float32)
