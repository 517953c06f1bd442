"""Helpers for the sharded-build tests: generated collections, index snapshots, and ranks run
as threads with an in-process collective (so the whole sharded flow runs in one test process, and
failures can be injected)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from index_helpers import COLOURS, FakeEncoder, write_video

from vtrkit.index import VideoIndex
from vtrkit.index.build.torchrun_build import build_index_sharded
from vtrkit.index.storage.catalog import Catalog
from vtrkit.index.storage.library import Library

QUERIES = ["red", "blue green", "yellow", "magenta cyan", "white orange"]


def make_videos(folder: Path, count: int = 7, seed: int = 0) -> Path:
    """``count`` short videos of random colours (1 to 10 s: one to four 4-s windows), most in two
    sub-folders, plus a file that is not a video."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    for i in range(count):
        seconds = 1 + (3 * i) % 10
        colours = [COLOURS[names[int(rng.integers(len(names)))]] for _ in range(seconds)]
        # "a-v00.mp4" sorts before "a/..." as a string but after it as a Path (the order a
        # build commits in), which the merge must follow to reproduce ids and rows.
        name = "a-v00.mp4" if i == 0 else f"{'a' if i % 2 else 'b'}/v{i:02d}.mp4"
        write_video(folder / name, colours)
    (folder / "a" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return folder


def snapshot(folder: Path) -> dict[str, Any]:
    """Everything an index holds: its catalog tables and the committed feature rows."""
    lib = Library.open(folder)
    try:
        db = lib.catalog._db
        tables = {
            name: db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()
            for name in ("videos", "windows", "thumbs", "meta")
        }
        rows = np.arange(lib.store.rows)
        return {
            "tables": tables,
            "pooled": lib.store.pooled(rows),
            "frames": lib.store.frames(rows),
            "mask": lib.store.mask_u8(rows),
        }
    finally:
        lib.close()


def assert_same_index(got: Path, want: Path) -> None:
    """Same catalog (videos with ids and failure reasons, windows, rows, thumbnails, settings)
    and bit-identical float16 features."""
    a, b = snapshot(got), snapshot(want)
    assert a["tables"] == b["tables"]
    for name in ("pooled", "frames", "mask"):
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert a[name].tobytes() == b[name].tobytes(), name


def features_by_window(folder: Path) -> dict[tuple[str, float, float], tuple[bytes, bytes, bytes]]:
    """(path, start, end) -> raw bytes of its pooled, frame and mask rows: comparable across
    indexes whatever their row numbering."""
    lib = Library.open(folder)
    try:
        out = {}
        for w in lib.catalog.windows():
            row = np.array([w.row])
            path = lib.catalog.video(w.video_id).path
            out[(path, w.start, w.end)] = (
                lib.store.pooled(row).tobytes(),
                lib.store.frames(row).tobytes(),
                lib.store.mask_u8(row).tobytes(),
            )
        return out
    finally:
        lib.close()


def search_all(folder: Path, encoder: Any) -> list[list[tuple]]:
    with VideoIndex.open(folder, encoder) as index:
        return [
            [(r.rank, r.score, r.path, r.start, r.end, r.video_id, r.window_id) for r in hits]
            for q in QUERIES
            for hits in (index.search(q, k=50), index.search(q, k=5, rerank=5))
        ]


class ThreadGroup:
    """An in-process :class:`~vtrkit.index.build.torchrun_build.Collective` for ranks run as threads."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=120)
        self.slots: list[Any] = [None] * world_size

    def member(self, rank: int) -> _Member:
        return _Member(self, rank)


class _Member:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def scatter(self, items: list[Any] | None) -> Any:
        if self.rank == 0:
            assert items is not None and len(items) == self.world_size
            self.group.slots = list(items)
        self.group.barrier.wait()
        item = self.group.slots[self.rank]
        self.group.barrier.wait()
        return item

    def all_gather(self, item: Any) -> list[Any]:
        self.group.slots[self.rank] = item
        self.group.barrier.wait()
        items = list(self.group.slots)
        self.group.barrier.wait()
        return items


def run_ranks(
    world_size: int, videos: Path, out: Path, encoders: list[Any], **options: Any
) -> list[Any]:
    """Run a sharded build with one thread per rank; returns each rank's report or exception."""
    group = ThreadGroup(world_size)
    results: list[Any] = [None] * world_size

    def rank_main(rank: int) -> None:
        try:
            results[rank] = build_index_sharded(
                videos, out, encoders[rank], collective=group.member(rank), **options
            )
        except BaseException as exc:  # handed back to the test
            results[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def catalog_paths(folder: Path) -> list[str]:
    with Catalog(folder / "catalog.sqlite", readonly=True) as catalog:
        return [v.path for v in catalog.videos()]


class FailingEncoder(FakeEncoder):
    """Raises once it has encoded ``budget`` batches (a process dying mid-build)."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def encode_video_windows(self, frames, mask):
        if self.video_calls >= self.budget:
            raise RuntimeError("simulated crash of rank 1")
        return super().encode_video_windows(frames, mask)
