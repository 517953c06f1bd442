"""Sharded index building: one process per GPU or machine under ``torchrun``, merged at the end.

::

    torchrun --nproc-per-node 4 -m vtrkit index build videos/ -o lib.vtr --checkpoint runs/demo

``vtrkit index build`` sees torchrun's ``WORLD_SIZE``/``RANK`` and calls
:func:`build_index_sharded` in every process:

1. Rank 0 takes ``LIB``'s writer lock (held to the end) and plans exactly as a single-process
   build does: files ``LIB`` already holds unchanged are skipped, touched files get their stat
   updated, and catalogued videos whose files are gone are removed. What is left to encode is
   split across the ranks (:func:`assign_shards`): a file some shard folder already encoded (a
   killed earlier run) stays with that shard, the rest go largest first to the rank with the
   fewest bytes so far, so every rank gets about the same amount of video. New files are not
   hashed here but by the rank that encodes them, so rank 0 does not read them all alone.
2. Every rank builds its share into ``LIB/shards/rank-<r>/``, an ordinary resumable index with
   ``LIB``'s model and window settings (:class:`~vtrkit.index.build.incremental.IndexUpdater`, without an
   ANN), on ``cuda:<LOCAL_RANK>`` or the CPU. The shard is pruned to exactly its share, so each
   file lives in one shard only. Only rank 0 shows progress bars.
3. After every rank has finished (a collective over a gloo group, which also carries any rank's
   error to all of them), rank 0 merges the shards into ``LIB``
   (:func:`~vtrkit.index.build.shard_merge.merge_into`), builds the ANN and deletes the shard folders.

Resuming: killed while shards are built, a rerun plans the same files again and gives every file
a shard already holds back to that shard, whose build skips what it committed; killed while
merging, a rerun finds the merged videos in ``LIB`` (skipped in step 1) and merges the rest; with
a different number of processes, shards without a process are kept and merged by rank 0. The
result equals a single-process build of the same files: the same catalog, ids and store rows, and
the features the encoder gives each window (bit-identical whenever a window's features do not
depend on which other windows share its batch).

On several machines ``LIB`` must be on a file system all of them share.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch

from vtrkit.distributed import DistEnv
from vtrkit.index.build.frame_decoding import WindowMode
from vtrkit.index.build.incremental import (
    BuildReport,
    IndexUpdater,
    Job,
    expand_sources,
    open_for_writing,
    window_mode_of,
)
from vtrkit.index.build.shard_merge import (
    check_shard_settings,
    list_shards,
    merge_into,
    remove_shards,
    shard_folder,
    shard_rank,
    shard_videos,
)
from vtrkit.index.storage.ann import AnnConfig
from vtrkit.index.storage.library import CATALOG_FILE, IndexSettings, Library, check_encoder
from vtrkit.index.storage.lock import writer_lock
from vtrkit.inference import Encoder

log = logging.getLogger(__name__)

GROUP_TIMEOUT = timedelta(days=7)
"""How long a rank waits in a collective. Ranks that finish their shard wait there for the
slowest one, which may take hours; a rank that dies makes torchrun stop the others instead."""


class ShardedBuildError(RuntimeError):
    """Another process of a sharded build failed (its own error names the cause)."""


def resolve_device(requested: str | None, env: DistEnv) -> str:
    """The torch device this process encodes on.

    An explicit device is kept, except that a bare ``cuda`` under torchrun becomes this process's
    GPU, ``cuda:<LOCAL_RANK>``. Without one, a sharded process uses its GPU when CUDA is
    available and the CPU otherwise; a single process uses the CPU (the CLI's old default).
    """
    if requested is None:
        if not (env.sharded and torch.cuda.is_available()):
            return "cpu"
        requested = "cuda"
    if requested == "cuda" and env.sharded:
        # More processes than GPUs on the machine share them round-robin rather than fail.
        count = max(1, torch.cuda.device_count())
        return f"cuda:{env.local_rank % count}"
    return requested


class Collective(Protocol):
    """The two collective steps a sharded build needs; every rank calls each once, in order."""

    rank: int
    world_size: int

    def scatter(self, items: list[Any] | None) -> Any:
        """Rank 0 passes one item per rank (others pass None); each rank gets its item."""
        ...

    def all_gather(self, item: Any) -> list[Any]:
        """Every rank passes an item and gets all of them, by rank."""
        ...


class TorchCollective:
    """:class:`Collective` over ``torch.distributed``, on a gloo group (CPU, any device mix).

    Joins the default group from torchrun's environment when none exists (and leaves it on
    :meth:`close`); inside a program that already has one, adds a gloo group beside it.
    """

    def __init__(self, env: DistEnv) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.world_size = env.rank, env.world_size
        self._owns_default = not dist.is_initialized()
        if self._owns_default:
            dist.init_process_group(
                "gloo", rank=env.rank, world_size=env.world_size, timeout=GROUP_TIMEOUT
            )
            self._group = None
        else:
            self._group = dist.new_group(backend="gloo", timeout=GROUP_TIMEOUT)

    def scatter(self, items: list[Any] | None) -> Any:
        out: list[Any] = [None]
        self._dist.scatter_object_list(
            out, items if self.rank == 0 else None, src=0, group=self._group
        )
        return out[0]

    def all_gather(self, item: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, item, group=self._group)
        return out

    def close(self) -> None:
        if self._owns_default and self._dist.is_initialized():
            self._dist.destroy_process_group()


@dataclass(frozen=True)
class ShardTask:
    """What rank 0 sends each rank after planning."""

    settings: IndexSettings | None
    """The library's settings; every shard is built with them."""
    paths: list[str] = field(default_factory=list)
    """Files this rank's shard must hold (it encodes those it does not hold yet)."""
    orphans: dict[int, list[str]] = field(default_factory=dict)
    """Rank 0 only: shards left by an earlier run with more processes, with the files each keeps."""
    error: str | None = None
    """Set when planning failed on rank 0; every rank then stops."""
    window_mode: WindowMode = "fixed"
    """The library's window mode; every shard is built with it."""


def assign_shards(
    jobs: Sequence[tuple[str, int]], world_size: int, held: Mapping[str, int] | None = None
) -> dict[int, list[str]]:
    """Split files to encode, given as (path, size in bytes), across ``world_size`` ranks.

    A file in ``held`` (path -> shard rank) stays with that shard: it is already encoded there.
    The others go largest first to the rank with the fewest bytes so far (ties to the lower
    rank), which balances the work by file size. Deterministic for the same input; each shard's
    paths come back sorted. Shards of ``held`` may be numbered beyond ``world_size``.
    """
    held = held or {}
    owned: dict[int, list[str]] = {}
    todo = []
    for path, size in jobs:
        if path in held:
            owned.setdefault(held[path], []).append(path)
        else:
            todo.append((path, int(size)))
    loads = [(0, rank) for rank in range(world_size)]
    for path, size in sorted(todo, key=lambda job: (-job[1], job[0])):
        load, rank = heapq.heappop(loads)
        owned.setdefault(rank, []).append(path)
        # Empty files still cost a decode attempt: count them as one byte.
        heapq.heappush(loads, (load + max(size, 1), rank))
    return {rank: sorted(paths, key=Path) for rank, paths in sorted(owned.items())}


def build_index_sharded(
    videos: str | Path | Sequence[str | Path],
    out: str | Path,
    encoder: Encoder,
    collective: Collective | None = None,
    window_length: float | None = None,
    window_stride: float | None = None,
    batch_windows: int = 16,
    decode_workers: int = 2,
    ann_config: AnnConfig = AnnConfig(),
    progress: bool = False,
    windows: WindowMode | None = None,
) -> BuildReport | None:
    """Run this process's part of a sharded build of ``videos`` into ``out`` (see the module
    docstring); every rank calls it with the same arguments. Returns the build's report on rank
    0 and None on the others. Without ``collective``, joins the group torchrun describes.

    Raises the rank's own error where it failed and :class:`ShardedBuildError` on the others.
    """
    own = collective is None
    comm: Any = TorchCollective(DistEnv.from_env()) if collective is None else collective
    try:
        return _Build(
            comm,
            Path(out),
            encoder,
            batch_windows,
            decode_workers,
            ann_config,
            progress and comm.rank == 0,
            windows,
        ).run(videos, window_length, window_stride)
    finally:
        if own:
            comm.close()


@dataclass
class _Lead:
    """Rank 0's state from planning to merging."""

    started: float
    report: BuildReport
    library: Library | None = None
    updater: IndexUpdater | None = None
    tasks: list[ShardTask] | None = None
    failure: Exception | None = None


class _Build:
    """One rank's part of a sharded build."""

    def __init__(
        self,
        comm: Collective,
        out: Path,
        encoder: Encoder,
        batch_windows: int,
        decode_workers: int,
        ann_config: AnnConfig,
        progress: bool,
        windows: WindowMode | None = None,
    ) -> None:
        self.windows = windows
        self.comm = comm
        self.out = out
        self.encoder = encoder
        self.batch_windows = batch_windows
        self.decode_workers = decode_workers
        self.ann_config = ann_config
        self.progress = progress

    def run(
        self,
        videos: str | Path | Sequence[str | Path],
        window_length: float | None,
        window_stride: float | None,
    ) -> BuildReport | None:
        with ExitStack() as stack:
            lead = None
            if self.comm.rank == 0:
                lead = self._lead(stack, videos, window_length, window_stride)
            task: ShardTask = self.comm.scatter(None if lead is None else lead.tasks)
            if task.error is not None:
                if lead is not None and lead.failure is not None:
                    raise lead.failure
                raise ShardedBuildError(f"rank 0 could not plan the build: {task.error}")
            windows = self._build_and_gather(task)
            return None if lead is None else self._finish(lead, windows)

    def _lead(
        self,
        stack: ExitStack,
        videos: str | Path | Sequence[str | Path],
        window_length: float | None,
        window_stride: float | None,
    ) -> _Lead:
        """Rank 0: open and lock LIB and plan. Errors are kept to be sent to every rank."""
        lead = _Lead(time.perf_counter(), BuildReport())
        try:
            library = open_for_writing(
                self.out, self.encoder, window_length, window_stride, windows=self.windows
            )
            stack.callback(library.close)
            # Held until the merge is done: no other writer may change LIB in between.
            stack.enter_context(writer_lock(library.folder))
            updater = self._updater(library, progress=self.progress)
            updater.prepare()
            lead.library, lead.updater = library, updater
            lead.tasks = self._plan(updater, expand_sources(videos), lead.report)
        except Exception as exc:
            lead.failure = exc
            lead.tasks = [ShardTask(None, error=_describe(exc))] * self.comm.world_size
        return lead

    def _updater(self, library: Library, progress: bool) -> IndexUpdater:
        return IndexUpdater(
            library,
            self.encoder,
            self.batch_windows,
            self.decode_workers,
            self.ann_config,
            progress=progress,
        )

    def _plan(
        self, updater: IndexUpdater, paths: list[Path], report: BuildReport
    ) -> list[ShardTask]:
        """Rank 0: skip and remove as a single-process build does, then split the rest."""
        wanted = [p.resolve() for p in paths]
        # New files are hashed by the rank that encodes them, not one by one here.
        jobs = updater.plan(wanted, report, hash_new=False)
        updater.remove_missing(wanted, report)
        settings = updater.library.settings
        world = self.comm.world_size
        owned = assign_shards(
            [(j.stat.path, j.stat.size) for j in jobs], world, self._held(jobs, settings)
        )
        orphans = {r: paths for r, paths in owned.items() if r >= world}
        # Shards of a larger earlier run that hold nothing wanted are pruned (to nothing) too,
        # so that the merge, which takes every video of every shard, takes none of theirs.
        for folder in list_shards(self.out):
            rank = shard_rank(folder)
            if rank is not None and rank >= world:
                orphans.setdefault(rank, [])
        mode = window_mode_of(updater.library.catalog)
        tasks = [ShardTask(settings, owned.get(r, []), window_mode=mode) for r in range(world)]
        tasks[0] = ShardTask(settings, owned.get(0, []), orphans, window_mode=mode)
        log.info(
            "sharded build: %d files to encode over %d processes (%s)",
            len(jobs),
            world,
            ", ".join(f"rank {r}: {len(t.paths)}" for r, t in enumerate(tasks)),
        )
        return tasks

    def _held(self, jobs: list[Job], settings: IndexSettings) -> dict[str, int]:
        """Files to encode that an existing shard already holds in the same version (same size
        and modification time, as a build decides a file is unchanged) -> that shard's rank."""
        wanted = {j.stat.path: (j.stat.size, j.stat.mtime_ns) for j in jobs}
        held: dict[str, int] = {}
        for folder in list_shards(self.out):
            rank = shard_rank(folder)
            assert rank is not None
            for video in shard_videos(folder, settings):
                if wanted.get(video.path) == (video.size, video.mtime_ns):
                    held.setdefault(video.path, rank)
        return held

    def _build_and_gather(self, task: ShardTask) -> list[int]:
        """Build this rank's shard, then wait for all ranks; windows encoded, by rank."""
        # Errors are caught so that every rank reaches the gather and learns of them, instead
        # of waiting there for a rank that is gone.
        failure, windows, error = None, 0, None
        try:
            windows = self._build_shard(task)
        except Exception as exc:
            failure, error = exc, _describe(exc)
        results = self.comm.all_gather((windows, error))
        if failure is not None:
            raise failure
        errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(results) if e is not None]
        if errors:
            raise ShardedBuildError(
                "the sharded build failed in another process and nothing was merged; fix the "
                "cause and run it again to resume:\n" + "\n".join(errors)
            )
        return [int(w) for w, _ in results]

    def _build_shard(self, task: ShardTask) -> int:
        """Bring this rank's shard (and on rank 0 any orphan shard) to exactly its files;
        returns the windows encoded."""
        assert task.settings is not None
        # A process whose model differs from LIB's is refused before it writes anything.
        check_encoder(task.settings, self.encoder, self.out)
        windows = self._update_shard(shard_folder(self.out, self.comm.rank), task, task.paths)
        for rank, paths in sorted(task.orphans.items()):
            windows += self._update_shard(shard_folder(self.out, rank), task, paths)
        return windows

    def _update_shard(self, folder: Path, task: ShardTask, paths: list[str]) -> int:
        assert task.settings is not None
        if not paths and not (folder / CATALOG_FILE).is_file():
            return 0  # nothing to encode and no stale shard to prune
        s = task.settings
        shard = open_for_writing(
            folder, self.encoder, s.window_length, s.window_stride, s.source, task.window_mode
        )
        try:
            check_shard_settings(s, shard.settings, folder)
            updater = self._updater(shard, progress=self.progress)
            # remove_missing prunes videos of an earlier run that are not this shard's share
            # (merged already, changed since, or given to another shard), so that every path is
            # in one shard only and the merge can take every video of every shard.
            report = updater.update([Path(p) for p in paths], remove_missing=True, shard=True)
            return report.windows
        finally:
            shard.close()

    def _finish(self, lead: _Lead, windows: list[int]) -> BuildReport:
        """Rank 0, every shard built: merge them into LIB, build the ANN, delete the shards."""
        assert lead.library is not None and lead.updater is not None
        shards = list_shards(self.out)
        merged = merge_into(lead.library, shards, progress=self.progress)
        report = lead.report
        report.added, report.updated = merged.added, merged.updated
        report.windows = sum(windows)
        report.windows_per_rank = windows
        lead.updater.finish(report, lead.started)
        # Only now, with everything committed and the ANN saved, are the shards redundant; a
        # crash before this line leaves them to be pruned and skipped by the next build.
        remove_shards(self.out, shards)
        return report


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
