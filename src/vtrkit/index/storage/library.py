"""An index folder on disk: its catalog, feature store, settings and ANN, opened together.

Layout: ``catalog.sqlite`` (videos, windows, thumbnails, settings), ``features/`` (the feature
store), ``ann.faiss`` + ``ann.json`` (the nearest-neighbour index and the catalog generation it
reflects). The ANN is derived data: when it is missing or older than the catalog it is brought up
to date by diffing its ids against the catalog's live rows.

Once compacted (:mod:`vtrkit.index.storage.compaction`) the store lives in ``features-<n>/`` instead, named by
the catalog's ``meta['store']``, and its ANN files live inside that folder. Store rows (and so ANN
ids) are renumbered by a compaction, so an ANN is only ever paired with the store folder it was
built from: a file left by an older store can never be diffed against the new numbering. Store
folders other than the active one are leftovers of a compaction (a crashed copy, or an old store
not yet deleted): they are never opened, and writers delete them while holding the writer lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtrkit.data.sampling import FrameSampling
from vtrkit.index.storage.ann import AnnConfig, AnnIndex, needs_rebuild
from vtrkit.index.storage.catalog import Catalog, CatalogError
from vtrkit.index.storage.feature_store import FeatureStore, StoreError, fsync_dir

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
FEATURES_DIR = "features"
ANN_FILE = "ann.faiss"
ANN_STATE_FILE = "ann.json"
_STORE_NAME = re.compile(r"features(?:-([0-9]+))?")
_RETRIES = 5
"""Attempts at reading a consistent (store, catalog) pair while a compaction commits; each retry
follows a commit, so more than one or two would need compactions back to back."""


MAX_OVERLAP = 16
"""At most this many windows may cover one moment (stride >= length / MAX_OVERLAP): a smaller
stride multiplies the encoding work without finding anything new."""


class IndexMismatchError(RuntimeError):
    """The index was built with another model (or other settings) than the one given."""


class SettingsError(ValueError):
    """Index settings that cannot work (a window shorter than one frame, a zero stride, ...);
    raised before anything is written, naming the option."""


def check_window_settings(length: float, stride: float, fps: float) -> None:
    """Raise :class:`SettingsError` unless windows of ``length`` s every ``stride`` s make sense
    for frames sampled at ``fps``: finite, at least one sampled frame long, stride in
    (0, length] and not below length / MAX_OVERLAP."""
    if not (math.isfinite(fps) and fps > 0):
        raise SettingsError(f"the model's frame rate must be a positive number, got fps={fps}")
    if not math.isfinite(length) or length < 1 / fps - 1e-9:
        raise SettingsError(
            f"window length (--window, window_length) is {length} s; it must be at least one "
            f"sampled frame, 1/fps = {1 / fps:g} s (e.g. the model's clip length; leave it unset "
            "for the default)"
        )
    if not math.isfinite(stride) or stride <= 0 or stride > length:
        raise SettingsError(
            f"window stride (--stride, window_stride) is {stride} s; it must be above 0 and at "
            f"most the window length {length:g} s (leave it unset for half the window)"
        )
    if stride < length / MAX_OVERLAP - 1e-9:
        raise SettingsError(
            f"window stride (--stride, window_stride) is {stride} s: more than {MAX_OVERLAP} "
            f"windows of {length:g} s would cover each moment; use at least "
            f"{length / MAX_OVERLAP:g} s"
        )


@dataclass(frozen=True)
class IndexSettings:
    """What every window of an index was encoded with; fixed when the index is created.

    In the catalog (:meth:`to_meta`) the sampling is stored flat, as ``num_frames``,
    ``image_size`` and ``fps`` next to the other settings."""

    fingerprint: str
    dim: int
    sampling: FrameSampling
    window_length: float
    window_stride: float
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "custom"})
    """How to rebuild the encoder: {"kind": "checkpoint"|"backbone", "path": ...} or custom."""

    def __post_init__(self) -> None:
        if int(self.dim) < 1:
            raise SettingsError(f"index setting dim must be positive, got {self.dim}")
        check_window_settings(self.window_length, self.window_stride, self.sampling.fps)

    def as_dict(self) -> dict[str, Any]:
        """The settings with the sampling flat (``num_frames``, ``image_size``, ``fps``), as the
        catalog and ``vtrkit index status --json`` have always shown them."""
        return {
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "num_frames": self.sampling.num_frames,
            "image_size": self.sampling.image_size,
            "fps": self.sampling.fps,
            "window_length": self.window_length,
            "window_stride": self.window_stride,
            "source": self.source,
        }

    def to_meta(self) -> dict[str, str]:
        """Catalog ``meta`` rows: the keys (and value strings) of every vtrkit index so far."""
        data = {**self.as_dict(), "source": json.dumps(self.source, sort_keys=True)}
        return {k: str(v) for k, v in data.items()}

    @classmethod
    def from_meta(cls, meta: dict[str, str], where: Path) -> IndexSettings:
        try:
            return cls(
                fingerprint=meta["fingerprint"],
                dim=int(meta["dim"]),
                sampling=_sampling_setting(meta),
                window_length=float(meta["window_length"]),
                window_stride=float(meta["window_stride"]),
                source=json.loads(meta.get("source", '{"kind": "custom"}')),
            )
        except SettingsError as exc:
            raise CatalogError(
                f"{where}: the index was saved with settings this vtrkit refuses ({exc}); an "
                "older version accepted them. Delete the folder and build the index again"
            ) from exc
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


def _sampling_setting(meta: dict[str, str]) -> FrameSampling:
    """The catalog's ``num_frames``/``fps``/``image_size`` rows; values that ``FrameSampling``
    refuses raise :class:`SettingsError` (a missing row raises ``KeyError``)."""
    try:
        return FrameSampling.from_dict(meta)
    except ValueError as exc:
        raise SettingsError(f"index setting {exc}") from exc


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
        want, got = getattr(settings.sampling, name), getattr(encoder.sampling, name)
        if got != want:
            raise IndexMismatchError(
                f"index {folder} uses {name}={want} but the encoder uses {got}; rebuild the "
                "index or use matching settings"
            )


def store_number(name: str) -> int | None:
    """``features`` -> 0, ``features-<n>`` -> n, anything else (not a store folder) -> None."""
    match = _STORE_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1) or 0)


class Library:
    """The opened parts of one index folder."""

    def __init__(self, folder: Path, catalog: Catalog, settings: IndexSettings, writable: bool):
        self.folder = folder
        self.catalog = catalog
        self.settings = settings
        self.writable = writable
        self.store_name = FEATURES_DIR
        """Folder name of the opened ``store`` (the active one when it was opened)."""
        self.store: FeatureStore
        self._ann: AnnIndex | None = None
        self._ann_generation = -1
        self._open_store()

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

    @property
    def store_dir(self) -> Path:
        """Folder of the opened feature store."""
        return self.folder / self.store_name

    def refresh(self) -> bool:
        """Pick up commits made by another process (``index add`` or ``index compact`` while
        serving): reopen the store when the committed row count or the active folder changed."""
        name, rows, _ = self.catalog.store_state()
        if (name or FEATURES_DIR) == self.store_name and rows == self.store.rows:
            return False
        self._open_store()
        return True

    def store_is_current(self) -> bool:
        """Whether the opened store is still the active one. Store names are never reused, so
        if this holds after reading catalog rows and store features, no compaction committed
        between the store being opened and now, and both used the same row numbering."""
        name, _, _ = self.catalog.store_state()
        return (name or FEATURES_DIR) == self.store_name

    def _open_store(self) -> None:
        for _ in range(_RETRIES):
            state = self.catalog.store_state()
            name, rows = state[0] or FEATURES_DIR, state[1]
            if store_number(name) is None:
                raise CatalogError(
                    f"{self.folder}: the catalog names the feature folder {name!r}, which is not "
                    "a store folder name; the catalog is damaged, rebuild the index"
                )
            try:
                if not (self.folder / name).is_dir() and (name != FEATURES_DIR or rows):
                    # A writable FeatureStore creates a missing folder, which is right only for
                    # the first build; never recreate a store that rows were committed to.
                    raise StoreError(
                        f"feature folder {self.folder / name} is missing; rebuild the index"
                    )
                store = FeatureStore(
                    self.folder / name,
                    self.settings.dim,
                    self.settings.sampling.num_frames,
                    rows,
                    self.writable,
                )
            except StoreError:
                # A compaction may have committed and deleted this folder between reading the
                # catalog and opening the files: try again with the new state.
                if self.catalog.store_state() != state:
                    continue
                raise
            self.store, self.store_name = store, name
            return
        raise StoreError(f"{self.folder} kept changing while being opened; try again")

    def next_store_name(self) -> str:
        """Folder name for the next compacted store: ``features-<n+1>`` after ``features-<n>``,
        skipping any leftover folder that could not be deleted, so the new folder starts empty."""
        numbers = [store_number(self.store_name) or 0]
        numbers += [store_number(p.name) or 0 for p in self.leftovers() if p.is_dir()]
        return f"{FEATURES_DIR}-{max(numbers) + 1}"

    def leftovers(self) -> list[Path]:
        """Files and folders that belonged to a store other than the active one: store folders
        left by a compaction (a crashed copy, an old store not yet deleted) and, once compacted,
        the original store's top-level ANN files."""
        active, _, _ = self.catalog.store_state()
        active = active or FEATURES_DIR
        found = [
            p
            for p in self.folder.iterdir()
            if p.is_dir() and store_number(p.name) is not None and p.name != active
        ]
        if active != FEATURES_DIR:
            for name in (ANN_FILE, ANN_STATE_FILE):
                found += [
                    p for p in (self.folder / name, self.folder / f"{name}.tmp") if p.exists()
                ]
        return sorted(found)

    def remove_leftovers(self) -> list[Path]:
        """Delete :meth:`leftovers` and return what was deleted. Only call while holding the
        writer lock (:func:`vtrkit.index.storage.lock.writer_lock`): a compaction in progress writes a
        folder that is not active yet, and without the lock it could be deleted under it.

        Best effort: leftovers are never read, so one that cannot be deleted (e.g. on Windows,
        while a server still maps its files) is logged and left for the next writer."""
        if not self.writable:
            raise CatalogError(f"{self.folder} is open read-only; open it writable to clean it")
        removed = []
        for path in self.leftovers():
            log.info("removing %s (left by an earlier feature store)", path)
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                log.warning("could not delete %s (it is not used any more): %s", path, exc)
                continue
            removed.append(path)
        if removed:
            fsync_dir(self.folder)
        return removed

    # -- ANN ----------------------------------------------------------------------------------

    def ann(self, config: AnnConfig = AnnConfig()) -> AnnIndex:
        """The ANN over all live windows, brought up to date with the catalog when needed."""
        for _ in range(_RETRIES):
            # Every commit that changes windows or rows bumps the generation (a compaction too),
            # so an unchanged generation means the cached ANN still matches the catalog.
            generation = self.catalog.generation
            if self._ann is not None and self._ann_generation == generation:
                return self._ann
            self.refresh()
            ann = self._load_ann(generation)
            if ann is None:
                ann = self._sync_ann(config)
            if not self.store_is_current():
                # A compaction committed while the live rows or ANN were read: they may mix two
                # row numberings. Start again from the new store.
                continue
            if self.writable:
                self._save_ann(ann, generation)
            self._ann, self._ann_generation = ann, generation
            return ann
        raise StoreError(f"{self.folder} kept changing while its ANN was loaded; try again")

    def _ann_paths(self) -> tuple[Path, Path]:
        """(ANN file, ANN state file) of the opened store: top-level for the original
        ``features/`` (as before compaction existed), inside the folder for a compacted store, so
        an ANN can only be read back with the store whose row numbers it holds."""
        where = self.folder if self.store_name == FEATURES_DIR else self.store_dir
        return where / ANN_FILE, where / ANN_STATE_FILE

    def _load_ann(self, generation: int) -> AnnIndex | None:
        ann_path, state_path = self._ann_paths()
        if not (state_path.is_file() and ann_path.is_file()):
            return None
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            return None
        if state.get("generation") != generation:
            return None
        return _load_or_none(ann_path)

    def _save_ann(self, ann: AnnIndex, generation: int) -> None:
        ann_path, state_path = self._ann_paths()
        try:
            ann.save(ann_path)
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(json.dumps({"generation": generation}))
            os.replace(tmp, state_path)
        except OSError as exc:
            # The ANN is a cache: a store folder deleted by a concurrent compaction (or a full
            # disk) only means the next open rebuilds it.
            log.warning("could not save the ANN to %s: %s", ann_path, exc)

    def _sync_ann(self, config: AnnConfig) -> AnnIndex:
        live = self.catalog.live_rows()
        ann_path, _ = self._ann_paths()
        ann = _load_or_none(ann_path) if ann_path.is_file() else None
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


def _load_or_none(path: Path) -> AnnIndex | None:
    """The ANN at ``path``, or None when it cannot be read (it is rebuilt from the store then)."""
    try:
        return AnnIndex.load(path)
    except (OSError, RuntimeError) as exc:  # faiss raises RuntimeError for missing/torn files
        log.warning("ignoring unreadable ANN %s: %s", path, exc)
        return None
