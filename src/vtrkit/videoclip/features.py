"""Per-second video features for VideoCLIP: the on-disk format, extraction, sharding, merging.

Array format (what any extractor, e.g. an external S3D script, must write)::

    OUT/index.json        {video_id: {"file": "<name>.npy", "seconds": n, "dim": d,
                                      "status": "ok" | "failed", "error": null | "<reason>"}}
    OUT/<name>.npy        numpy float16 array [n, d]: row s describes second s of the video,
                          i.e. [s, s + 1) (for the CLIP extractor: the frame at the start of s)

``file`` is relative to OUT and is the video id when that is a safe file name (otherwise a
sanitised name with a short hash). Failed videos have ``"file": null, "seconds": 0, "dim": 0`` and
the reason in ``error``; readers skip them.

Extraction is resumable and crash-safe: each array is written to a temporary file and renamed into
place, and then one JSON line is appended (and flushed to disk) to this process's log
``OUT/index.rank<r>.jsonl``. A rerun reads ``index.json`` and every log, skips videos already done
(and, unless asked to retry, those recorded as failed) and continues. At the end the logs are
merged into ``index.json`` (written atomically) and removed. Under ``torchrun`` each process takes
every ``world_size``-th video (by sorted id) and, after a barrier, rank 0 merges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vtrkit.distributed import DistEnv

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
LOG_PATTERN = "index.rank*.jsonl"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

Extractor = Callable[[Path], np.ndarray]
"""Video path → per-second features [seconds, d] (any float dtype; stored as float16)."""


@dataclass(frozen=True)
class FeatureEntry:
    """One row of ``index.json``."""

    file: str | None
    seconds: int
    dim: int
    status: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def feature_file_name(video_id: str) -> str:
    """File name for a video's array: the id itself when safe, else a sanitised id + hash."""
    if _SAFE_NAME.match(video_id) and not video_id.startswith("index."):
        return f"{video_id}.npy"
    digest = hashlib.sha1(video_id.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', video_id)[:80]}-{digest}.npy"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_index(root: Path, entries: dict[str, FeatureEntry]) -> Path:
    """Write ``root/index.json`` atomically (sorted by video id)."""
    path = Path(root) / INDEX_FILE
    payload = {vid: asdict(entries[vid]) for vid in sorted(entries)}
    _atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
    return path


def read_index(root: Path) -> dict[str, FeatureEntry]:
    """Entries of ``root/index.json``; raises naming the file when it is missing or malformed."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `vtrkit features VIDEOS {root}` first (or write the documented "
            "array format with your own extractor)"
        )
    try:
        raw = json.loads(path.read_text())
        return {vid: FeatureEntry(**row) for vid, row in raw.items()}
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid feature index ({exc})") from exc


def _read_logs(root: Path) -> dict[str, FeatureEntry]:
    entries: dict[str, FeatureEntry] = {}
    for log_path in sorted(Path(root).glob(LOG_PATTERN)):
        for line in log_path.read_text().splitlines():
            try:
                row = json.loads(line)
                video_id = row.pop("video_id")
                entries[video_id] = FeatureEntry(**row)
            except (json.JSONDecodeError, TypeError, KeyError):
                # A process killed mid-write leaves a torn last line; that video is redone.
                log.warning("%s: ignoring an incomplete line", log_path)
    return entries


def known_entries(root: Path) -> dict[str, FeatureEntry]:
    """Everything recorded so far: ``index.json`` overlaid with the per-process logs."""
    entries = read_index(root) if (Path(root) / INDEX_FILE).is_file() else {}
    entries.update(_read_logs(root))
    return entries


def merge_shard_indexes(root: Path) -> dict[str, FeatureEntry]:
    """Fold the per-process logs into ``index.json`` and delete them. Idempotent."""
    root = Path(root)
    entries = known_entries(root)
    write_index(root, entries)
    for log_path in root.glob(LOG_PATTERN):
        log_path.unlink()
    return entries


def load_features(root: Path, video_id: str, entry: FeatureEntry | None = None) -> np.ndarray:
    """Memory-mapped float16 features [seconds, d] of one video."""
    root = Path(root)
    entry = entry if entry is not None else read_index(root).get(video_id)
    if entry is None or not entry.ok or entry.file is None:
        reason = "not in the index" if entry is None else f"status {entry.status}: {entry.error}"
        raise KeyError(f"{root / INDEX_FILE}: no features for video {video_id!r} ({reason})")
    array = np.load(root / entry.file, mmap_mode="r")
    if array.ndim != 2 or array.shape != (entry.seconds, entry.dim):
        raise ValueError(
            f"{root / entry.file}: shape {array.shape} does not match the index "
            f"({entry.seconds}, {entry.dim})"
        )
    return array


def save_features(root: Path, video_id: str, features: np.ndarray) -> FeatureEntry:
    """Write one video's array [seconds, d] as float16 (atomic) and return its index entry."""
    arr = np.asarray(features)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"features of {video_id!r} must be a non-empty [seconds, d] array")
    if not np.isfinite(arr).all():
        raise ValueError(f"features of {video_id!r} contain NaN or inf")
    name = feature_file_name(video_id)
    path = Path(root) / name
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr.astype(np.float16))
    os.replace(tmp, path)
    return FeatureEntry(file=name, seconds=int(arr.shape[0]), dim=int(arr.shape[1]), status="ok")


def shard_from_env() -> tuple[int, int]:
    """(rank, world_size) of this process in a torchrun launch; (0, 1) otherwise."""
    env = DistEnv.from_env()
    return env.rank, env.world_size


def videos_in_folder(folder: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """``{video_id: path}`` of the video files under ``folder`` (recursive); id = file stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist")
    wanted = {e.lower() for e in extensions}
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in wanted or not path.is_file():
            continue
        if path.stem in found:
            raise ValueError(
                f"two videos share the id {path.stem!r}: {found[path.stem]} and {path}; "
                "rename one (the feature index is keyed by file stem)"
            )
        found[path.stem] = path
    return found


@dataclass
class ExtractionSummary:
    """What one process did."""

    assigned: int
    extracted: int
    skipped: int
    failed: int
    seconds: float


def extract_features(
    videos: dict[str, Path],
    root: Path,
    extractor: Extractor,
    rank: int = 0,
    world_size: int = 1,
    retry_failed: bool = False,
    merge: bool = True,
) -> ExtractionSummary:
    """Extract this process's share of ``videos`` ({id: path}) into ``root``.

    Videos whose extraction raises are recorded as failed with the reason and skipped. With
    ``merge`` the logs are folded into ``index.json`` at the end (after a barrier when a
    ``torch.distributed`` process group is running, by rank 0 only).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    done = known_entries(root)
    mine = sorted(videos)[rank::world_size]
    started = time.perf_counter()
    extracted = skipped = failed = 0
    log_path = root / f"index.rank{rank}.jsonl"
    with log_path.open("a+b") as out:
        # A torn last line (a killed run) must not swallow the next record.
        if out.tell() > 0:
            out.seek(-1, os.SEEK_END)
            if out.read(1) != b"\n":
                out.write(b"\n")
        for video_id in mine:
            if _is_done(done.get(video_id), root, retry_failed):
                skipped += 1
                continue
            try:
                entry = save_features(root, video_id, extractor(videos[video_id]))
                extracted += 1
            except Exception as exc:  # any decoder or model failure: record it and go on
                log.warning("features of %s failed: %s", videos[video_id], exc)
                entry = FeatureEntry(
                    file=None,
                    seconds=0,
                    dim=0,
                    status="failed",
                    error=f"{type(exc).__name__}: {exc}",
                )
                failed += 1
            out.write((json.dumps({"video_id": video_id, **asdict(entry)}) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())
    if merge:
        _merge_after_all(root, rank)
    return ExtractionSummary(len(mine), extracted, skipped, failed, time.perf_counter() - started)


def _is_done(entry: FeatureEntry | None, root: Path, retry_failed: bool) -> bool:
    """Whether a recorded video needs no new extraction (its array exists, or it failed and
    failures are not retried)."""
    if entry is None:
        return False
    if entry.ok:
        return (root / str(entry.file)).is_file()
    return not retry_failed


def _merge_after_all(root: Path, rank: int) -> None:
    import torch.distributed as dist

    running = dist.is_available() and dist.is_initialized()
    if running:
        dist.barrier()
    if rank == 0:
        merge_shard_indexes(root)
    if running:
        dist.barrier()


def index_summary(entries: dict[str, FeatureEntry]) -> dict[str, Any]:
    """Counts for a report: videos ok / failed, total seconds, feature width(s)."""
    ok = [e for e in entries.values() if e.ok]
    return {
        "videos": len(entries),
        "ok": len(ok),
        "failed": len(entries) - len(ok),
        "seconds": int(sum(e.seconds for e in ok)),
        "dims": sorted({e.dim for e in ok}),
    }


class ClipSecondExtractor:
    """The default extractor: CLIP's projected class token of the first frame of every second.

    The video is decoded in windows of ``chunk_seconds`` (bounded memory for long videos) with the
    SPEC §0 sampling at 1 fps, preprocessed (resize, centre crop, normalise) and encoded in
    batches. Row ``s`` is the frame sampled in second ``s``; a second without a frame (a gap in
    variable-frame-rate video) repeats the previous second's vector so that rows stay aligned
    with time.
    """

    def __init__(
        self,
        towers: torch.nn.Module,
        image_size: int | None = None,
        batch_size: int = 64,
        chunk_seconds: int = 120,
        device: str = "cpu",
    ) -> None:
        self.towers = towers.to(device).eval()
        self.image_size = int(image_size or towers.image_size)
        self.batch_size = batch_size
        self.chunk_seconds = chunk_seconds
        self.device = device

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> np.ndarray:
        """uint8 frames [n, S, S, 3] → float32 [n, D]."""
        from vtrkit.data.transforms import to_model_input

        out = []
        for i in range(0, len(frames), self.batch_size):
            pixels = to_model_input(frames[i : i + self.batch_size]).to(self.device)
            out.append(self.towers.encode_image(pixels).float().cpu())
        return torch.cat(out).numpy()

    def __call__(self, path: Path) -> np.ndarray:
        from vtrkit.data.decode import VideoDecodeError, probe, read_sampled_frames
        from vtrkit.data.sampling import FrameSampling

        # Every second of a chunk: at most chunk_seconds frames at 1 fps.
        sampling = FrameSampling(self.chunk_seconds, 1.0, self.image_size)
        duration = probe(path).duration
        seconds = max(1, math.ceil(duration))
        rows: dict[int, np.ndarray] = {}
        for start in range(0, seconds, self.chunk_seconds):
            window = (float(start), float(min(seconds, start + self.chunk_seconds)))
            try:
                frames, times, _ = read_sampled_frames(path, sampling, window)
            except VideoDecodeError:
                if start == 0:
                    raise
                continue  # no frame in this stretch (a cut-short file): filled below
            for t, vec in zip(times, self.encode_frames(frames), strict=True):
                rows[math.floor(t + 1e-6)] = vec
        if not rows:
            raise ValueError(f"{path}: no frame could be read")
        last = max(rows)
        out = np.empty((last + 1, next(iter(rows.values())).shape[0]), dtype=np.float32)
        previous = rows[min(rows)]
        for s in range(last + 1):
            previous = rows.get(s, previous)
            out[s] = previous
        return out
