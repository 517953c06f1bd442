"""A build killed with SIGKILL mid-way and rerun equals an uninterrupted build."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from index_helpers import FakeEncoder, write_video

from vtrkit.index import build_index
from vtrkit.index.storage.library import Library

HELPERS = Path(__file__).parent
SRC = Path(__file__).parents[2] / "src"

# The child commits slowly, and pauses between flushing a video's features and committing them,
# so the kill usually lands with rows written but not committed (the torn state resuming must
# ignore and overwrite).
CHILD = textwrap.dedent(
    """
    import sys, time
    from index_helpers import FakeEncoder
    from vtrkit.index import build_index
    from vtrkit.index.storage.catalog import Catalog

    original = Catalog.commit_video
    def slow_commit(self, *args, **kwargs):
        time.sleep(0.25)
        return original(self, *args, **kwargs)
    Catalog.commit_video = slow_commit
    build_index(sys.argv[1], sys.argv[2], FakeEncoder(), batch_windows=1)
    """
)


def committed_videos(catalog: Path) -> int:
    if not catalog.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM videos WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def dump(folder: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Everything a build produces: catalog tables and the committed feature rows."""
    lib = Library.open(folder)
    try:
        db = lib.catalog._db
        tables = {
            name: db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()
            for name in ("videos", "windows", "thumbs", "meta")
        }
        rows = np.arange(lib.store.rows)
        return tables, lib.store.pooled(rows), lib.store.frames(rows), lib.store.mask(rows)
    finally:
        lib.close()


def test_killed_build_resumes_to_the_same_index(tmp_path):
    rng = np.random.default_rng(0)
    videos = tmp_path / "videos"
    for i in range(10):
        colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2 + i % 4)]
        write_video(videos / f"v{i:02d}.mp4", colours)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really")
    total = 10

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HELPERS)])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(videos), str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while committed_videos(killed / "catalog.sqlite") < 4:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child build made no progress"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    done_before = committed_videos(killed / "catalog.sqlite")
    assert 4 <= done_before < total, "the kill must land mid-build"

    # Resume with another batch size: results must not depend on how windows were batched.
    encoder = FakeEncoder()
    report = build_index(videos, killed, encoder, batch_windows=4)
    assert len(report.added) == total - done_before
    assert [p for p, _ in report.failed] == [str((videos / "broken.mp4").resolve())]

    reference = tmp_path / "reference"
    build_index(videos, reference, FakeEncoder(), batch_windows=16)

    got, ref = dump(killed), dump(reference)
    assert got[0] == ref[0]  # same videos, ids, windows, rows, thumbnails, settings
    for a, b in zip(got[1:], ref[1:], strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)  # bit-identical float16 features
