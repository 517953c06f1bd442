"""Each video is committed on its own: a build killed right after each commit loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import numpy as np
from frame_helpers import FakeFrameEncoder, write_noise_video
from index_helpers import write_video

from vtrkit.index import build_index
from vtrkit.index.storage.library import Library

HELPERS = Path(__file__).parent
SRC = Path(__file__).parents[2] / "src"

# The child kills itself (SIGKILL, with the decode-ahead workers running) right after its first
# video commit, so every run commits exactly one more video.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from frame_helpers import FakeFrameEncoder
    from vtrkit.index import build_index
    from vtrkit.index.storage.catalog import Catalog

    original = Catalog.commit_video
    def commit_then_die(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return out
    Catalog.commit_video = commit_then_die
    build_index(sys.argv[1], sys.argv[2], FakeFrameEncoder(), batch_windows=2)
    """
)


def committed(folder: Path) -> dict[str, tuple]:
    """path -> (window spans, pooled features of its rows) of every committed video."""
    if not (folder / "catalog.sqlite").exists():
        return {}
    with closing(Library.open(folder)) as lib:
        out = {}
        for video in lib.catalog.videos(status="ok"):
            windows = lib.catalog.windows(video.id)
            rows = np.array([w.row for w in windows])
            out[video.path] = ([(w.start, w.end) for w in windows], lib.store.pooled(rows))
        assert len(lib.catalog.live_rows()) == sum(len(w) for w, _ in out.values())
        return out


def test_a_build_killed_after_each_committed_video_loses_nothing(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        write_noise_video(videos / f"v{i}.mp4", 5 + 2 * i, size=(32 + 8 * i, 32))
    write_video(videos / "short.mp4", [(255, 0, 0), (0, 255, 0)])
    reference = tmp_path / "reference"
    build_index(videos, reference, FakeFrameEncoder())
    want = committed(reference)
    assert len(want) == 5

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HELPERS)])}
    before: dict[str, tuple] = {}
    for run in range(len(want)):
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(videos), str(out)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
        now = committed(out)
        # Exactly one more video, and every video committed before is still there unchanged.
        assert len(now) == run + 1
        for path, (spans, pooled) in before.items():
            assert now[path][0] == spans
            np.testing.assert_array_equal(now[path][1], pooled)
        for path, (spans, pooled) in now.items():
            assert spans == want[path][0]
            np.testing.assert_array_equal(pooled, want[path][1])
        before = now

    # Nothing left to do: a rerun encodes nothing and the index equals the reference.
    encoder = FakeFrameEncoder()
    report = build_index(videos, out, encoder)
    assert report.unchanged == 5 and not report.added and encoder.frames_encoded == 0
    assert committed(out).keys() == want.keys()
