"""Damaged files are indexed as partial, with the missing windows and seconds named."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import numpy as np
import pytest
from frame_helpers import FakeFrameEncoder, write_noise_video

from vtrkit.index import build_index
from vtrkit.index.storage.catalog import Catalog, FileStat, NewWindow
from vtrkit.index.storage.library import Library


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    good = write_noise_video(root / "good.mp4", 12, faststart=True)
    data = good.read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    rng = np.random.default_rng(5)
    start, stop = int(len(data) * 0.45), int(len(data) * 0.6)
    corrupt[start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    (root / "corrupt.mp4").write_bytes(bytes(corrupt))
    (root / "empty.mp4").write_bytes(b"")
    return root


def test_damaged_files_are_partial_with_reasons(damaged, tmp_path):
    encoder = FakeFrameEncoder()
    report = build_index(damaged, tmp_path / "lib", encoder)
    assert [p for p, _ in report.failed] == [str((damaged / "empty.mp4").resolve())]
    with closing(Library.open(tmp_path / "lib")) as lib:
        catalog = lib.catalog
        partial = {v.path: v.reason for v in catalog.videos_with_status("partial")}
        assert set(partial) == {str((damaged / n).resolve()) for n in ("cut.mp4", "corrupt.mp4")}
        cut = partial[str((damaged / "cut.mp4").resolve())]
        assert "frames end at" in cut and "declared 12.0 s" in cut and "not indexed" in cut
        corrupt = partial[str((damaged / "corrupt.mp4").resolve())]
        assert "could not be decoded between" in corrupt
        assert " s (" in corrupt and "frames)" in corrupt  # the windows missing frames, named
        ok = catalog.videos_with_status("ok")
        assert [v.path for v in ok] == [str((damaged / "good.mp4").resolve())]
        assert ok[0].reason is None and ok[0].condition == "ok"
        failed = catalog.videos_with_status("failed")
        assert failed[0].condition == "failed" and "empty" in failed[0].reason
        assert len(catalog.videos_with_status()) == 4
        assert len(catalog.videos_with_status("partial", "failed")) == 3
        # Partial videos are indexed: their decoded windows are searchable rows.
        video = catalog.video_by_path(str((damaged / "cut.mp4").resolve()))
        windows = catalog.windows(video.id)
        assert windows and max(w.end for w in windows) < 12.0
        full = catalog.windows(ok[0].id)
        assert len(windows) < len(full)
        with pytest.raises(ValueError, match="ok, partial or failed"):
            catalog.videos_with_status("broken")


OLD_VIDEOS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')), error TEXT, duration REAL
);
INSERT INTO meta VALUES ('schema', '1'), ('rows', '0'), ('generation', '0');
INSERT INTO videos VALUES (1, '/v/old.mp4', 1, 1, 'h', 'ok', NULL, 4.0);
"""


def test_a_catalog_from_before_the_damage_column_stays_readable(tmp_path):
    path = tmp_path / "catalog.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_VIDEOS)
    with Catalog(path, readonly=True) as catalog:
        (old,) = catalog.videos()
        assert old.damage is None and old.condition == "ok"
    with Catalog(path) as catalog:  # writable: the column is added
        stat = FileStat("/v/new.mp4", 2, 2, "h2")
        catalog.commit_video(stat, 8.0, [NewWindow(0.0, 8.0, 0)], 1, damage="3 packets lost")
        assert catalog.video_by_path("/v/old.mp4").condition == "ok"
        new = catalog.video_by_path("/v/new.mp4")
        assert (new.condition, new.reason) == ("partial", "3 packets lost")
        # Re-encoding the file cleanly clears the damage; a failure replaces it with the error.
        catalog.commit_video(stat, 8.0, [NewWindow(0.0, 8.0, 1)], 2)
        assert catalog.video_by_path("/v/new.mp4").condition == "ok"
        catalog.record_failure(stat, "gone")
        assert catalog.video_by_path("/v/new.mp4").reason == "gone"
