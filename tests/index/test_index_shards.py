"""Sharded index building: split across processes, built per shard, merged into one index.

The result must equal a single-process build of the same files. Most tests run the ranks as
threads with an in-process collective (fast, and failures can be injected); one runs a real
2-process ``torchrun`` of ``vtrkit index build`` with a tiny model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from index_helpers import COLOURS, FakeEncoder, tiny_config, write_video
from shard_helpers import (
    FailingEncoder,
    assert_same_index,
    catalog_paths,
    features_by_window,
    make_videos,
    run_ranks,
    search_all,
    snapshot,
)

from vtrkit.index import build_index, load_model_for_index
from vtrkit.index.build import shard_merge as shards_module
from vtrkit.index.build.incremental import open_for_writing
from vtrkit.index.build.shard_merge import (
    SHARDS_DIR,
    ShardMismatchError,
    merge_into,
    merge_shards,
    shard_folder,
)
from vtrkit.index.build.torchrun_build import (
    DistEnv,
    ShardedBuildError,
    assign_shards,
    resolve_device,
)
from vtrkit.index.storage.catalog import Catalog
from vtrkit.index.storage.feature_store import FeatureStore
from vtrkit.models.build import build_model
from vtrkit.train.checkpoint import save_checkpoint


class Killed(BaseException):
    """Stands for the process being killed (not an Exception, so nothing handles it)."""


# -- splitting and devices ----------------------------------------------------------------------


def test_assign_shards_balances_by_size_and_keeps_held_files():
    jobs = [("/v/a", 100), ("/v/b", 60), ("/v/c", 50), ("/v/d", 40), ("/v/e", 10), ("/v/f", 0)]
    owned = assign_shards(jobs, 2)
    # Largest first to the least loaded rank: a -> 0; b, c -> 1 (110); d -> 0 (140); e, f -> 1.
    assert owned == {0: ["/v/a", "/v/d"], 1: ["/v/b", "/v/c", "/v/e", "/v/f"]}
    assert assign_shards(list(reversed(jobs)), 2) == owned  # input order does not matter
    # Files a shard already holds stay there (even a shard beyond the world size); the rest
    # balance the remaining work.
    held = assign_shards(jobs, 2, held={"/v/a": 1, "/v/f": 3})
    assert held == {0: ["/v/b", "/v/e"], 1: ["/v/a", "/v/c", "/v/d"], 3: ["/v/f"]}
    assert sorted(p for paths in held.values() for p in paths) == sorted(p for p, _ in jobs)


def test_device_per_rank(monkeypatch):
    one, two = DistEnv(0, 1, 0), DistEnv(3, 4, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None, one) == "cpu"  # a single process keeps the old default
    assert resolve_device(None, two) == "cuda:1"
    assert resolve_device("cuda", two) == "cuda:1" and resolve_device("cuda", one) == "cuda"
    assert resolve_device("cpu", two) == "cpu" and resolve_device("cuda:0", two) == "cuda:0"
    assert resolve_device(None, DistEnv(5, 6, 3)) == "cuda:1"  # more ranks than GPUs share them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None, two) == "cpu"


# -- sharded builds (ranks as threads) ----------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_videos(tmp_path_factory.mktemp("shard-videos"))


@pytest.fixture(scope="module")
def single(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "lib"
    build_index(videos, out, FakeEncoder())
    return out


def test_sharded_build_equals_single_build(videos, single, tmp_path):
    out = tmp_path / "lib"
    encoders = [FakeEncoder() for _ in range(3)]
    reports = run_ranks(3, videos, out, encoders)
    assert reports[1] is None and reports[2] is None
    report = reports[0]
    assert not isinstance(report, BaseException), report
    assert_same_index(out, single)
    assert search_all(out, FakeEncoder()) == search_all(single, FakeEncoder())
    assert not (out / SHARDS_DIR).exists()
    # Every window was encoded once, and the work was spread over all ranks.
    total = snapshot(single)["pooled"].shape[0]
    assert sum(e.windows_encoded for e in encoders) == report.windows == total
    assert all(e.windows_encoded > 0 for e in encoders)
    assert report.windows_per_rank == [e.windows_encoded for e in encoders]
    assert len(report.added) == 7 and [p for p, _ in report.failed] == [
        str((videos / "a" / "broken.mp4").resolve())
    ]
    assert "sharded over 3 processes" in report.summary()


def test_incremental_sharded_rebuild_equals_single_rebuild(tmp_path):
    videos = make_videos(tmp_path / "videos", count=5, seed=1)
    base = tmp_path / "base"
    build_index(videos, base, FakeEncoder())
    # Change the collection: two new files, one changed, one removed, one only touched.
    write_video(videos / "a" / "new1.mp4", [COLOURS["white"]] * 3)
    write_video(videos / "new2.mp4", [COLOURS["orange"]] * 2)
    write_video(videos / "a-v00.mp4", [COLOURS["cyan"]] * 5)
    (videos / "a" / "v01.mp4").unlink()
    os.utime(videos / "b" / "v02.mp4", ns=(1, 1))

    single, sharded = tmp_path / "single", tmp_path / "sharded"
    shutil.copytree(base, single)
    shutil.copytree(base, sharded)
    want = build_index(videos, single, FakeEncoder())
    encoders = [FakeEncoder(), FakeEncoder()]
    got = run_ranks(2, videos, sharded, encoders)[0]
    assert not isinstance(got, BaseException), got

    assert_same_index(sharded, single)
    assert search_all(sharded, FakeEncoder()) == search_all(single, FakeEncoder())
    # Unchanged files were skipped before sharding: only the new and changed ones were encoded.
    assert (got.added, got.updated, got.removed) == (want.added, want.updated, want.removed)
    assert got.unchanged == want.unchanged == 4  # v02 (touched), v03, v04, broken
    assert got.failed == want.failed
    assert got.windows == want.windows == sum(e.windows_encoded for e in encoders)


def test_failed_rank_stops_all_and_rerun_resumes_per_shard(videos, single, tmp_path):
    out = tmp_path / "lib"
    first = [FakeEncoder(), FailingEncoder(budget=1)]
    results = run_ranks(2, videos, out, first, batch_windows=1)
    assert isinstance(results[1], RuntimeError) and "simulated crash" in str(results[1])
    assert isinstance(results[0], ShardedBuildError) and "rank 1" in str(results[0])
    assert catalog_paths(out) == []  # nothing merged
    assert catalog_paths(shard_folder(out, 0)) and len(catalog_paths(shard_folder(out, 1))) == 1

    # Rerun with working encoders: each shard keeps what it committed and encodes the rest.
    again = [FakeEncoder(), FakeEncoder()]
    report = run_ranks(2, videos, out, again)[0]
    assert not isinstance(report, BaseException), report
    assert_same_index(out, single)
    assert not (out / SHARDS_DIR).exists()
    total = snapshot(single)["pooled"].shape[0]
    encoded_before = first[0].windows_encoded + first[1].windows_encoded
    # What the shards held was kept (the rest was balanced over both ranks again): no window
    # was encoded twice.
    assert encoded_before + again[0].windows_encoded + again[1].windows_encoded == total


def test_build_killed_while_merging_resumes_without_encoding_again(
    videos, single, tmp_path, monkeypatch
):
    out = tmp_path / "lib"
    original = Catalog.commit_videos

    def killed_after_first_chunk(self, records, rows_end):
        original(self, records, rows_end)
        raise Killed("rank 0 killed while merging")

    monkeypatch.setattr(Catalog, "commit_videos", killed_after_first_chunk)
    monkeypatch.setattr(shards_module, "CHUNK_BYTES", 1)  # a transaction per video
    results = run_ranks(2, videos, out, [FakeEncoder(), FakeEncoder()])
    assert isinstance(results[0], Killed) and results[1] is None
    assert 0 < len(catalog_paths(out)) < 8 and (out / SHARDS_DIR).is_dir()
    monkeypatch.setattr(Catalog, "commit_videos", original)
    # The rerun skips what was merged (unchanged in LIB), keeps the rest in its shards and
    # merges it: nothing is encoded again.
    again = [FakeEncoder(), FakeEncoder()]
    report = run_ranks(2, videos, out, again)[0]
    assert not isinstance(report, BaseException), report
    assert again[0].windows_encoded == again[1].windows_encoded == 0
    assert_same_index(out, single)
    assert not (out / SHARDS_DIR).exists()


def test_file_changed_after_an_interrupted_run_is_not_merged_stale(tmp_path):
    videos = make_videos(tmp_path / "videos", count=5, seed=3)
    out = tmp_path / "lib"
    results = run_ranks(2, videos, out, [FakeEncoder(), FailingEncoder(budget=1)], batch_windows=1)
    assert isinstance(results[1], RuntimeError)
    with Catalog(shard_folder(out, 1) / "catalog.sqlite", readonly=True) as catalog:
        (stale,) = [Path(v.path) for v in catalog.videos("ok")]
    # The file rank 1 encoded changes, and becomes the largest, so the rerun gives it to rank 0:
    # rank 1's shard must drop its old version rather than keep it for the merge.
    write_video(stale, [COLOURS["white"], COLOURS["blue"]] * 8, size=(64, 48))
    report = run_ranks(2, videos, out, [FakeEncoder(), FakeEncoder()])[0]
    assert not isinstance(report, BaseException), report
    reference = tmp_path / "single"
    build_index(videos, reference, FakeEncoder())
    assert_same_index(out, reference)
    assert search_all(out, FakeEncoder()) == search_all(reference, FakeEncoder())


def test_rerun_with_fewer_processes_merges_the_leftover_shards(videos, single, tmp_path):
    out = tmp_path / "lib"
    first = [FakeEncoder(), FakeEncoder(), FailingEncoder(budget=0)]
    results = run_ranks(3, videos, out, first)
    assert isinstance(results[2], RuntimeError)
    assert catalog_paths(shard_folder(out, 1))  # rank 1 finished its shard
    # One process now: the shards of ranks 1 and 2 have no process; rank 0 keeps and merges
    # what they hold and encodes the rest.
    encoder = FakeEncoder()
    report = run_ranks(1, videos, out, [encoder])[0]
    assert not isinstance(report, BaseException), report
    assert_same_index(out, single)
    assert not (out / SHARDS_DIR).exists()
    total = snapshot(single)["pooled"].shape[0]
    assert encoder.windows_encoded == total - first[0].windows_encoded - first[1].windows_encoded


# -- merging shard folders directly -------------------------------------------------------------


def build_shards(videos: Path, out: Path, encoders: list[Any], **options: Any) -> list[Path]:
    """Two shard folders holding alternate files of ``videos`` (sorted), built the ordinary way."""
    files = sorted(p.resolve() for p in videos.rglob("*.mp4"))
    shards = []
    for rank, encoder in enumerate(encoders):
        folder = shard_folder(out, rank)
        build_index(files[rank :: len(encoders)], folder, encoder, **options)
        shards.append(folder)
    return shards


def test_merge_equals_single_build_and_resumes_after_interruptions(
    videos, single, tmp_path, monkeypatch
):
    out = tmp_path / "lib"
    shards = build_shards(videos, out, [FakeEncoder(), FakeEncoder()])
    open_for_writing(out, FakeEncoder()).close()

    original = Catalog.commit_videos
    calls = {"n": 0}

    def crash_after_second(self, videos, rows_end):
        ids = original(self, videos, rows_end)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed("after the second chunk committed")
        return ids

    # Chunks of one feature row: (about) every video is its own transaction.
    monkeypatch.setattr(Catalog, "commit_videos", crash_after_second)
    with pytest.raises(Killed):
        merge_shards(out, chunk_bytes=1)
    done = len(catalog_paths(out))
    assert 2 <= done < 8
    assert all(s.is_dir() for s in shards)  # kept until everything is merged

    def crash_before_commit(self, videos, rows_end):
        # The chunk's rows are appended and flushed but never committed.
        raise Killed("before the chunk committed")

    monkeypatch.setattr(Catalog, "commit_videos", crash_before_commit)
    with pytest.raises(Killed):
        merge_shards(out, chunk_bytes=1)
    assert len(catalog_paths(out)) == done

    monkeypatch.setattr(Catalog, "commit_videos", original)
    report = merge_shards(out)
    assert report.skipped == done and len(report.added) + len(report.failed) == 8 - done
    assert_same_index(out, single)  # no duplicate; same ids, rows and features
    assert search_all(out, FakeEncoder()) == search_all(single, FakeEncoder())
    assert not (out / SHARDS_DIR).exists()
    # Merging again is a no-op.
    assert merge_shards(out, shards=[]).skipped == 0
    assert_same_index(out, single)


def test_merge_into_streams_in_bounded_chunks(videos, single, tmp_path, monkeypatch):
    out = tmp_path / "lib"
    shards = build_shards(videos, out, [FakeEncoder(), FakeEncoder()])
    library = open_for_writing(out, FakeEncoder())
    appended: list[int] = []
    append = FeatureStore.append

    def recording_append(self, pooled, frames, mask):
        appended.append(len(pooled))
        return append(self, pooled, frames, mask)

    monkeypatch.setattr(FeatureStore, "append", recording_append)
    commits: list[int] = []
    try:
        # Two rows per chunk (a row of the fake encoder is 2*12*(4+1) + 4 = 124 bytes); the
        # videos of four windows are copied in two appends and committed whole.
        report = merge_into(library, shards, chunk_bytes=250, on_commit=commits.append)
        library.ann()
    finally:
        library.close()
    total = snapshot(single)["pooled"].shape[0]
    assert max(appended) == 2 and sum(appended) == report.windows == total
    assert len(appended) > len(report.added)  # longer videos took several appends
    assert len(commits) >= 3 and commits[-1] == len(report.added) + len(report.failed) == 8
    assert_same_index(out, single)


@pytest.mark.parametrize(
    ("encoder", "options", "named"),
    [
        (FakeEncoder(salt="retrained"), {}, "fingerprint"),
        (FakeEncoder(), {"window_length": 2.0, "window_stride": 1.0}, "window_length"),
    ],
)
def test_merge_refuses_shards_of_another_model_or_settings(
    videos, tmp_path, encoder, options, named
):
    out = tmp_path / "lib"
    files = sorted(p.resolve() for p in videos.rglob("*.mp4"))
    good, bad = shard_folder(out, 0), shard_folder(out, 1)
    build_index(files[:3], good, FakeEncoder())
    build_index(files[3:], bad, encoder, **options)
    open_for_writing(out, FakeEncoder()).close()
    with pytest.raises(ShardMismatchError) as err:
        merge_shards(out)
    assert str(bad) in str(err.value) and named in str(err.value)
    assert str(good) not in str(err.value)
    assert catalog_paths(out) == []  # refused before anything was written
    assert good.is_dir() and bad.is_dir()
    # A sharded build finding such a shard refuses it the same way, naming it.
    results = run_ranks(2, videos, out, [FakeEncoder(), FakeEncoder()])
    assert isinstance(results[0], ShardMismatchError) and str(bad) in str(results[0])
    assert isinstance(results[1], ShardedBuildError)
    assert catalog_paths(out) == []


def test_merge_refuses_a_path_held_by_two_shards(videos, tmp_path):
    out = tmp_path / "lib"
    one = videos / "a-v00.mp4"
    for rank in (0, 1):
        build_index(one, shard_folder(out, rank), FakeEncoder())
    open_for_writing(out, FakeEncoder()).close()
    with pytest.raises(ValueError, match="two shards"):
        merge_shards(out)


# -- a real torchrun ----------------------------------------------------------------------------


def test_torchrun_two_processes_build_the_same_index(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    model, _ = build_model(cfg.model, cfg.data)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint", model, cfg)
    videos = make_videos(tmp_path / "videos", count=5, seed=2)
    out = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # --batch 1 encodes each window on its own in both builds: a real model's float32 output can
    # change in the last bit with the batch it shares, which is not what this test is about.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vtrkit",
        "index",
        "build",
        str(videos),
        "-o",
        str(out),
        "--checkpoint",
        str(ckpt),
        "--batch",
        "1",
        "--workers",
        "1",
        # The single-process reference encodes in fp32; the CLI's default (auto) may pick bf16,
        # whose kernels can round a frame differently with the frames it is batched with.
        "--precision",
        "fp32",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 added" in proc.stdout and "1 failed" in proc.stdout
    assert "sharded over 2 processes" in proc.stdout
    assert not (out / SHARDS_DIR).exists()

    reference = tmp_path / "single"
    encoder = load_model_for_index(ckpt, batch_size=1)
    build_index(videos, reference, encoder, batch_windows=1)
    got, want = features_by_window(out), features_by_window(reference)
    assert len(want) > 5 and got == want  # same windows, bit-identical features
    with (
        Catalog(out / "catalog.sqlite", readonly=True) as a,
        Catalog(reference / "catalog.sqlite", readonly=True) as b,
    ):
        failed = [(v.path, v.error) for v in a.videos("failed")]
        assert len(failed) == 1 and failed == [(v.path, v.error) for v in b.videos("failed")]
        assert [v.path for v in a.videos()] == [v.path for v in b.videos()]
    assert search_all(out, encoder) == search_all(reference, encoder)
