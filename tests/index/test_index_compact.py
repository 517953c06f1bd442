"""Store compaction: dead rows reclaimed, results unchanged, and any crash leaves a working index."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import typer
from index_helpers import COLOURS, FakeEncoder, write_video
from typer.testing import CliRunner

from vtrkit.cli.index import register
from vtrkit.index import VideoIndex, build_index
from vtrkit.index.storage import compaction as compact_module
from vtrkit.index.storage import library as library_module
from vtrkit.index.storage.catalog import CatalogError
from vtrkit.index.storage.compaction import compact_index
from vtrkit.index.storage.library import Library
from vtrkit.index.storage.lock import IndexBusyError, writer_lock

HELPERS = Path(__file__).parent
SRC = Path(__file__).parents[2] / "src"
QUERIES = ["red", "green blue", "yellow magenta", "cyan", "white orange red"]
KILL_STAGES = ["copying", "written", "in-transaction", "committed", "cleaned"]
COMMITTED_STAGES = {"committed", "cleaned"}

# Compacts the index in argv[1] two rows at a time and SIGKILLs itself when compaction reaches the
# stage in argv[2] (see vtrkit.index.storage.compaction._checkpoint); exits 3 if it never got there. The
# packages vtrkit and vtrkit.index are stubbed so that their __init__ files, which import torch
# (seconds per child), do not run: compaction's own modules never use torch.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, types
    from pathlib import Path

    for name in ("vtrkit", "vtrkit.index"):
        package = types.ModuleType(name)
        package.__path__ = [str(Path(sys.argv[3], *name.split(".")))]
        sys.modules[name] = package
    from vtrkit.index.storage import compaction as compact

    assert "torch" not in sys.modules

    def kill_at(stage):
        if stage == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)

    compact._checkpoint = kill_at
    compact.compact_index(sys.argv[1], chunk_rows=2)
    sys.exit(3)
    """
)


def random_video(path: Path, seconds: int, rng: np.random.Generator) -> Path:
    """Random colours per second: every window has its own features, so no score ties."""
    return write_video(
        path, [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(seconds)]
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(7)
    # 8-11 s: longer than two 4-s windows, so every video has several windows.
    return [random_video(root / f"v{i}.mp4", 8 + i % 4, rng) for i in range(9)]


@pytest.fixture(scope="module")
def template(videos, tmp_path_factory) -> Path:
    """An index with dead rows in the middle of the store and live rows after them: v1 and v3
    removed, a video re-encoded (its new rows at the end), then v8 added."""
    root = tmp_path_factory.mktemp("template")
    out = root / "lib"
    changing = shutil.copy(videos[5], root / "changing.mp4")
    build_index([*videos[:8], changing], out, FakeEncoder(), batch_windows=3)
    random_video(changing, 6, np.random.default_rng(99))
    keep = [v for i, v in enumerate(videos[:8]) if i not in (1, 3)]
    report = build_index([*keep, changing], out, FakeEncoder())
    assert len(report.removed) == 2 and report.updated == [str(changing.resolve())]
    build_index([*keep, changing, videos[8]], out, FakeEncoder())
    with closing(Library.open(out)) as lib:
        counts = lib.catalog.counts()
    assert counts["dead_rows"] >= 4 and counts["windows"] >= 8, counts
    return out


@pytest.fixture
def lib(template, tmp_path) -> Path:
    """A private copy of the template index."""
    return Path(shutil.copytree(template, tmp_path / "lib"))


def snapshot(folder: Path) -> list[tuple]:
    """Search results of several kinds of query, with ids, spans and exact scores."""
    with VideoIndex.open(folder, FakeEncoder()) as index:
        return snapshot_of(index)


def snapshot_of(index: VideoIndex) -> list[tuple]:
    out: list[tuple] = []
    for query in QUERIES:
        for options in ({}, {"rerank": 5}, {"one_per_video": True}):
            hits = index.search(query, k=50, **options)
            out.append(tuple((h.video_id, h.window_id, h.start, h.end, h.score) for h in hits))
    video = index.catalog.videos()[2]
    like = index.search_like(video.path, k=50)
    out.append(tuple((h.video_id, h.window_id, h.score) for h in like))
    return out


def features_by_window(folder: Path) -> dict[int, tuple[bytes, bytes, bytes]]:
    """Every window's stored features, as raw bytes."""
    with closing(Library.open(folder)) as lib:
        out = {}
        for w in lib.catalog.windows():
            row = np.array([w.row])
            out[w.id] = (
                lib.store.pooled(row).tobytes(),
                lib.store.frames(row).tobytes(),
                lib.store.mask(row).tobytes(),
            )
        return out


def state(folder: Path) -> tuple[str | None, int, int]:
    with closing(Library.open(folder)) as lib:
        return lib.catalog.store_state()


def counts(folder: Path) -> dict[str, int]:
    with closing(Library.open(folder)) as lib:
        return lib.catalog.counts()


def store_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("features"))


def test_compaction_reclaims_dead_rows_and_keeps_results(lib):
    before_results, before_features = snapshot(lib), features_by_window(lib)
    before = counts(lib)
    old_size = sum(f.stat().st_size for f in (lib / "features").iterdir())

    report = compact_index(lib, chunk_rows=3)  # several chunks

    assert report.compacted and report.store == "features-1"
    assert (report.rows_before, report.rows_after) == (before["rows"], before["windows"])
    assert report.dead_rows == before["dead_rows"] and report.bytes_reclaimed > 0
    assert "feature rows" in report.summary() and "reclaimed" in report.summary()
    after = counts(lib)
    assert after["dead_rows"] == 0 and after["rows"] == after["windows"] == before["windows"]
    with closing(Library.open(lib)) as opened:
        np.testing.assert_array_equal(opened.catalog.live_rows(), np.arange(after["rows"]))
        generation = opened.catalog.generation
        # A vtrkit without compaction would read features/ (if a crash left it): it must refuse.
        assert opened.catalog.get_meta("schema") == "2"
    # The old store and its top-level ANN are gone; the new files hold exactly the live rows.
    assert store_dirs(lib) == ["features-1"]
    assert not (lib / "ann.faiss").exists() and not (lib / "ann.json").exists()
    new = lib / "features-1"
    d, nf = 12, 4
    assert (new / "pooled.f16").stat().st_size == after["rows"] * d * 2
    assert (new / "frames.f16").stat().st_size == after["rows"] * nf * d * 2
    assert (new / "mask.u8").stat().st_size == after["rows"] * nf
    assert sum(f.stat().st_size for f in new.iterdir()) < old_size
    # The ANN was rebuilt for the new rows and saved beside them, for the current generation.
    assert json.loads((new / "ann.json").read_text()) == {"generation": generation}

    assert features_by_window(lib) == before_features
    assert snapshot(lib) == before_results


def test_an_open_reader_follows_a_compaction(lib, tmp_path):
    dead = counts(lib)["dead_rows"]
    with VideoIndex.open(lib, FakeEncoder()) as reader:
        first = [(h.window_id, h.score) for h in reader.search("red", k=50)]
        rows = reader.library.store.rows
        compact_index(lib)
        # As many one-window videos added as rows were dropped: the row count is back to what
        # the reader has open, so only the new folder name tells it to reopen.
        rng = np.random.default_rng(5)
        extra = [random_video(tmp_path / "extra" / f"e{i}.mp4", 4, rng) for i in range(dead)]
        with VideoIndex.open(lib, FakeEncoder(), writable=True) as writer:
            writer.add(extra)
        assert counts(lib)["rows"] == rows
        # The reader still holds the deleted old store; its next query moves to the new one.
        again = reader.search("red", k=50)
        assert reader.library.store_name == "features-1"
        expected = snapshot(lib)
        assert snapshot_of(reader) == expected
    assert {(h.window_id, h.score) for h in again} >= set(first)


@pytest.mark.parametrize("during", ["windows_by_rows", "live_rows"])
def test_a_compaction_committing_during_a_query_is_not_seen_half(lib, during):
    """The catalog read inside a query (mapping hits to windows, or listing rows for the ANN)
    happens just after another process's compaction committed: the query must not mix the old
    store's row numbers with the new catalog's."""
    expected = snapshot(lib)
    (lib / "ann.json").unlink()  # the reader then builds its ANN, reading the live rows
    with VideoIndex.open(lib, FakeEncoder()) as reader:
        catalog = reader.library.catalog
        original = getattr(catalog, during)
        calls = []

        def compact_first(*args, **kwargs):
            if not calls:
                calls.append(compact_index(lib))
            return original(*args, **kwargs)

        setattr(catalog, during, compact_first)
        if during == "live_rows":
            # Called directly, the ANN must hold the new store's vectors under the new rows.
            ann, library = reader.library.ann(), reader.library
            live = library.catalog.live_rows()
            np.testing.assert_array_equal(ann.ids(), live)
            _, found = ann.search(library.store.pooled(live).astype(np.float32), 1)
            np.testing.assert_array_equal(found[:, 0], live)
        assert snapshot_of(reader) == expected
        assert calls and calls[0].compacted


def test_a_failure_before_the_commit_leaves_the_index_untouched(lib, monkeypatch):
    expected, before = snapshot(lib), state(lib)

    def fail(stage):
        if stage == "written":
            raise OSError("disk full")

    monkeypatch.setattr(compact_module, "_checkpoint", fail)
    with pytest.raises(OSError, match="disk full"):
        compact_index(lib)
    assert state(lib) == before and store_dirs(lib) == ["features"]  # the copy was removed
    assert snapshot(lib) == expected


def test_a_leftover_that_cannot_be_deleted_is_skipped(lib, monkeypatch):
    """E.g. on Windows, where a server mapping the files prevents deletion."""
    (lib / "features-1").mkdir()
    (lib / "features-1" / "pooled.f16").write_bytes(b"junk")
    expected = snapshot(lib)

    def refuse(path, *args, **kwargs):
        raise PermissionError(f"{path} is in use")

    monkeypatch.setattr(library_module.shutil, "rmtree", refuse)
    report = compact_index(lib)
    assert report.store == "features-2"  # a fresh name, not the undeletable folder
    assert store_dirs(lib) == ["features", "features-1", "features-2"]
    assert snapshot(lib) == expected
    monkeypatch.undo()
    assert not compact_index(lib).compacted  # the next writer deletes them
    assert store_dirs(lib) == ["features-2"]
    assert snapshot(lib) == expected


def test_a_stale_copy_is_not_committed(lib):
    with closing(Library.open(lib, writable=True)) as opened:
        catalog = opened.catalog
        live, stale = catalog.live_rows(), catalog.store_state()
        catalog.remove_videos([catalog.videos()[0].id])  # commits after the "copy" was made
        now, rows = catalog.store_state(), catalog.live_rows()
        with pytest.raises(CatalogError, match="changed while"):
            catalog.commit_compaction(live, "features-1", stale)
        assert catalog.store_state() == now
        np.testing.assert_array_equal(catalog.live_rows(), rows)


@pytest.fixture(scope="module")
def killed(template, tmp_path_factory) -> dict[str, tuple[Path, int, str]]:
    """A copy of the template per stage, compacted by a child SIGKILLed at that stage; the
    children run side by side. {stage: (folder, return code, stderr)}."""
    root = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HELPERS)])}
    children = {}
    for stage in KILL_STAGES:
        folder = Path(shutil.copytree(template, root / stage))
        children[stage] = (
            folder,
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(folder), stage, str(SRC)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ),
        )
    out = {}
    for stage, (folder, child) in children.items():
        _, err = child.communicate(timeout=120)
        out[stage] = (folder, child.returncode, err.decode())
    return out


@pytest.mark.parametrize("stage", KILL_STAGES)
def test_a_compaction_killed_at_any_stage_leaves_a_working_index(template, killed, stage):
    folder, returncode, stderr = killed[stage]
    assert returncode == -signal.SIGKILL, stderr
    expected, before = snapshot(template), state(template)

    # Either the old state, untouched, or the new one; never a mix.
    if stage in COMMITTED_STAGES:
        store, rows, generation = state(folder)
        assert (store, generation) == ("features-1", before[2] + 1)
        assert rows == counts(folder)["windows"] and counts(folder)["dead_rows"] == 0
        assert not (folder / "features-1" / "ann.faiss").exists()  # killed before it was built
    else:
        assert state(folder) == before
        assert (folder / "features-1").is_dir()  # the abandoned copy, never read
    assert (folder / "features").is_dir() == (stage != "cleaned")
    if stage == "committed":
        # A kill in the middle of deleting the old folder.
        (folder / "features" / "pooled.f16").unlink()

    assert snapshot(folder) == expected
    assert features_by_window(folder) == features_by_window(template)

    # Rerunning finishes the job (or, once committed, only cleans up) and changes no result.
    report = compact_index(folder)
    assert report.compacted == (stage not in COMMITTED_STAGES)
    assert store_dirs(folder) == ["features-1"]
    assert not (folder / "ann.faiss").exists()
    assert counts(folder)["dead_rows"] == 0
    assert snapshot(folder) == expected


def test_compacting_without_dead_rows_is_a_no_op(videos, tmp_path):
    out = tmp_path / "lib"
    build_index(videos[:3], out, FakeEncoder())
    before_state, expected = state(out), snapshot(out)
    files = {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()}

    report = compact_index(out)
    assert not report.compacted and report.rows_before == report.rows_after
    assert report.bytes_reclaimed == 0
    assert report.summary().startswith("nothing to compact")
    assert state(out) == before_state and store_dirs(out) == ["features"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()} == files
    assert snapshot(out) == expected


def test_add_and_build_after_compaction(lib, videos, tmp_path):
    compact_index(lib)
    rows = counts(lib)["rows"]
    extra = write_video(tmp_path / "more" / "orange.mp4", [COLOURS["orange"]] * 4)
    with VideoIndex.open(lib, FakeEncoder(), writable=True) as index:
        report = index.add([extra])
        assert report.added == [str(extra.resolve())]
        hit = index.search("orange", k=1)[0]
        assert hit.path == extra.resolve() and hit.score == pytest.approx(1.0, abs=2e-3)
    # The new rows went to the end of the active store; no features/ folder came back.
    assert counts(lib)["rows"] == rows + 1 and counts(lib)["dead_rows"] == 0
    assert store_dirs(lib) == ["features-1"]

    # Remove two videos and compact again; then the index equals a fresh build of what is left.
    with closing(Library.open(lib)) as opened:
        remaining = [Path(v.path) for v in opened.catalog.videos()]
    final = remaining[2:]
    build_index(final, lib, FakeEncoder())
    assert counts(lib)["dead_rows"] > 0
    with VideoIndex.open(lib, FakeEncoder(), writable=True) as index:
        assert index.compact().store == "features-2"
    assert store_dirs(lib) == ["features-2"] and counts(lib)["dead_rows"] == 0

    fresh = tmp_path / "fresh"
    build_index(final, fresh, FakeEncoder())
    for query in [*QUERIES, "orange"]:
        with VideoIndex.open(lib, FakeEncoder()) as a, VideoIndex.open(fresh, FakeEncoder()) as b:
            got = [(h.path, h.start, h.end, h.score) for h in a.search(query, k=50, rerank=4)]
            ref = [(h.path, h.start, h.end, h.score) for h in b.search(query, k=50, rerank=4)]
        assert got == ref


def test_writers_exclude_each_other(lib, videos):
    with writer_lock(lib):
        with pytest.raises(IndexBusyError, match="another process is writing"):
            compact_index(lib)
        with pytest.raises(IndexBusyError):
            build_index(videos[:2], lib, FakeEncoder())
    assert counts(lib)["dead_rows"] > 0  # nothing happened
    compact_index(lib)  # the lock is free again


def test_cli_compact_and_status(lib, tmp_path):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    before = counts(lib)

    result = runner.invoke(app, ["index", "status", str(lib)])
    assert result.exit_code == 0, result.output
    assert f"{before['dead_rows']} dead feature rows" in result.output
    assert "vtrkit index compact" in result.output

    result = runner.invoke(app, ["index", "compact", str(lib)])
    assert result.exit_code == 0, result.output
    assert f"{before['rows']} -> {before['windows']} feature rows" in result.output
    assert "reclaimed" in result.output

    result = runner.invoke(app, ["index", "status", str(lib)])
    assert "0 dead feature rows" in result.output
    assert "vtrkit index compact" not in result.output
    result = runner.invoke(app, ["index", "compact", str(lib)])
    assert result.exit_code == 0 and "nothing to compact" in result.output

    result = runner.invoke(app, ["index", "compact", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a vtrkit index" in result.output
    with writer_lock(lib):
        result = runner.invoke(app, ["index", "compact", str(lib)])
    assert result.exit_code == 2 and "another process is writing" in result.output
