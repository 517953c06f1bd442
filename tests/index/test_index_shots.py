"""Windows that follow shots: cuts found on the decoded frames, windows start at them."""

from __future__ import annotations

from contextlib import closing

import pytest
from frame_helpers import FakeFrameEncoder, write_shots

from vtrkit.data.sampling import FrameSampling
from vtrkit.index import build_index
from vtrkit.index.build.frame_decoding import WindowSpec, decode_video
from vtrkit.index.build.shots import Shot, plan_shot_windows
from vtrkit.index.storage.library import Library

CUTS = [0.0, 3.3, 7.0, 7.6, 10.5, 20.2]
DURATION = 24.0


@pytest.fixture(scope="module")
def shots_video(tmp_path_factory):
    return write_shots(tmp_path_factory.mktemp("shots") / "shots.mp4", CUTS, DURATION)


def test_windows_start_at_the_cuts(shots_video):
    # 4-s windows at 1 fps: the 0.6-s shot at 7.0 joins the next one (7.0-10.5), the 9.7-s
    # shot at 10.5 is split in three; every other window starts at a cut.
    spec = WindowSpec(FrameSampling(4, 1.0, 16), length=4.0, stride=2.0, mode="shots")
    frames = []
    plan = decode_video(shots_video, spec, frames.append)
    starts = [start for start, _ in plan.windows]
    step = 1.0 / spec.sampling.fps
    for cut in [0.0, 3.3, 7.0, 10.5, 20.2]:
        assert any(abs(s - cut) < step for s in starts), (cut, starts)
    # Within one sampled frame, and in fact at the cut's first frame (1/10 s at 10 fps).
    assert [round(s, 1) for s in starts] == [0.0, 3.3, 7.0, 10.5, 14.5, 17.5, 20.2]
    assert all(end - start <= spec.length + 1e-9 for start, end in plan.windows)
    assert plan.windows[-1][1] == pytest.approx(DURATION)
    # Each shot is sampled from its cut: a window's first frame is the frame at its start.
    by_key = {f.key: f for f in frames}
    assert all(keys and keys[0] in by_key for keys in plan.keys)
    assert len(by_key) == len(frames)  # every sampled frame decoded and encoded once
    assert plan.damage is None


def test_shot_windows_in_an_index(shots_video, tmp_path):
    encoder = FakeFrameEncoder(FrameSampling(4, 1.0, 16))
    build_index([shots_video], tmp_path / "lib", encoder, windows="shots")
    with closing(Library.open(tmp_path / "lib")) as lib:
        starts = [round(w.start, 1) for w in lib.catalog.windows()]
    assert starts == [0.0, 3.3, 7.0, 10.5, 14.5, 17.5, 20.2]
    # The index remembers its mode; another mode is refused naming the option.
    build_index([shots_video], tmp_path / "lib", encoder)
    with pytest.raises(ValueError, match="--windows"):
        build_index([shots_video], tmp_path / "lib", encoder, windows="fixed")


def test_short_shots_merge_and_long_ones_split():
    def shot(start, stop):
        return Shot(start, [(t + 0.0, int(t * 10)) for t in range(int(start), int(stop))])

    shots = [shot(0, 1), shot(1, 5), shot(5, 6), shot(6, 15), shot(15, 16)]
    windows = plan_shot_windows(shots, 16.0, length=4.0, min_shot=2.0, num_frames=8)
    # 0-1 joins 1-5 (one 5-s window split in two), 5-6 joins 6-15, the last short shot 15-16
    # joins the one before: 5-16 is 11 s, three parts starting at sampled frames.
    assert [(w.start, w.end) for w in windows] == [
        (0.0, 3.0),
        (3.0, 5.0),
        (5.0, 9.0),
        (9.0, 13.0),
        (13.0, 16.0),
    ]
    assert [len(w.keys) for w in windows] == [3, 2, 4, 4, 3]
    keys = [k for w in windows for k in w.keys]
    assert keys == sorted(keys) and len(set(keys)) == 16
    # More sampled frames than Nf: SPEC §0 subsampling keeps Nf of them.
    long = plan_shot_windows([shot(0, 10)], 10.0, length=10.0, min_shot=2.0, num_frames=4)
    assert [w.keys for w in long] == [[0, 30, 60, 90]]
