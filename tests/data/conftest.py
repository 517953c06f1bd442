"""Fixtures that write small real video files for the data tests (and anyone else who needs one).

``make_video`` is a factory: it encodes a short clip with PyAV in the requested codec and container
and returns a :class:`GeneratedVideo` that records the exact presentation timestamp of every frame.
Each frame's grey levels encode its index (:func:`grey_index_frame`, read back by the
``decoded_frame_index`` fixture), so a test can tell which source frame a decoder returned even
after lossy coding and resizing. ``shared_video`` writes a file once per session;
``broken_videos`` writes one file per kind of bad input the decoder must reject.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

# Grey levels step by LEVEL_STEP so lossy codecs (error of a few levels) never confuse neighbours.
LEVEL_BASE = 16
LEVEL_STEP = 5
LEVELS = (235 - LEVEL_BASE) // LEVEL_STEP + 1

DEFAULT_CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".avi": "mpeg4",
    ".webm": "libvpx-vp9",
}


def level_of(digit: int) -> int:
    """Grey level (0..255) that encodes ``digit`` in ``range(LEVELS)``."""
    if not 0 <= digit < LEVELS:
        raise ValueError(f"{digit} cannot be encoded as one grey level (max {LEVELS - 1})")
    return LEVEL_BASE + LEVEL_STEP * digit


def digit_of(level: float) -> int:
    """Inverse of :func:`level_of` for a measured (noisy) mean grey level."""
    return round((float(level) - LEVEL_BASE) / LEVEL_STEP)


def grey_index_frame(index: int, width: int, height: int) -> np.ndarray:
    """Frame [H, W, 3] uint8 encoding ``index``: top half ``index % LEVELS``, bottom the rest."""
    if not 0 <= index < LEVELS * LEVELS:
        raise ValueError(f"frame index {index} is too large to encode (max {LEVELS**2 - 1})")
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[: height // 2] = level_of(index % LEVELS)
    image[height // 2 :] = level_of(index // LEVELS)
    return image


def frame_index(image: np.ndarray) -> int:
    """Which ``grey_index_frame`` an upright decoded image [H, W, 3] (any size) shows."""
    image = np.asarray(image, dtype=np.float64)
    height = image.shape[0]
    # Stay clear of the blurred boundary between the halves.
    top = image[: int(height * 0.4)].mean()
    bottom = image[int(height * 0.6) :].mean()
    return digit_of(top) + LEVELS * digit_of(bottom)


@dataclass(frozen=True)
class GeneratedVideo:
    """A video written by ``make_video``.

    timestamps: presentation time (s) of every encoded frame, in order.
    size: (width, height) as stored, before any display rotation.
    rotation: counter-clockwise display rotation written into the container (degrees).
    hflip: whether the display matrix also mirrors the rotated frame horizontally.
    """

    path: Path
    timestamps: list[float]
    fps: float
    size: tuple[int, int]
    codec: str
    rotation: int
    hflip: bool = False

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)


FrameDrawer = Callable[[int, int, int], np.ndarray]


def write_video(
    path: Path,
    *,
    codec: str | None = None,
    container: str | None = None,
    seconds: float = 3.0,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
    timestamps: Sequence[float] | None = None,
    rotation: int = 0,
    hflip: bool = False,
    gop: int | None = None,
    bframes: int | None = None,
    draw: FrameDrawer = grey_index_frame,
    audio: bool = False,
) -> GeneratedVideo:
    """Encode a clip and return what was written.

    ``timestamps`` (seconds, increasing) overrides ``seconds``/``fps`` to make a variable-frame-rate
    clip. ``rotation`` (counter-clockwise degrees, as FFmpeg reports it) and ``hflip`` (mirror after
    rotating) are stored as display-matrix side data. ``gop`` / ``bframes`` set the keyframe interval and B-frame count where the codec
    supports them. ``container`` is a format name (e.g. "matroska"); default: from the suffix.
    """
    path = Path(path)
    codec = codec or DEFAULT_CODECS.get(path.suffix.lower(), "libx264")
    regular = timestamps is None
    if timestamps is None:
        count = max(1, round(seconds * fps))
        timestamps = [i / fps for i in range(count)]
    timestamps = [float(t) for t in timestamps]
    width, height = size
    rate = Fraction(fps).limit_denominator(1001)
    # Regular clips tick once per frame, like real constant-rate files (AVI stores nothing else);
    # irregular ones use milliseconds.
    time_base = 1 / rate if regular else Fraction(1, 1000)
    with av.open(str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if codec == "libx264":
            # Deterministic, fast, and keyint honoured exactly (no scene-cut keyframes).
            stream.codec_context.options = {"preset": "ultrafast", "sc_threshold": "0"}
            if bframes:
                stream.codec_context.options = {"preset": "veryfast", "sc_threshold": "0"}
        if codec.startswith("libvpx"):
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        if codec == "mpeg4":
            stream.codec_context.qscale = 2
            stream.codec_context.flags |= av.codec.context.Flags.qscale
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        audio_stream = out.add_stream("aac", rate=8000) if audio else None
        for index, t in enumerate(timestamps):
            frame = av.VideoFrame.from_ndarray(draw(index, width, height), format="rgb24")
            frame.pts = index if regular else round(t * 1000)
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio_stream is not None:
            _write_silence(out, audio_stream, timestamps[-1] + 1.0 / fps)
    return GeneratedVideo(path, timestamps, float(fps), (width, height), codec, rotation, hflip)


def _write_silence(
    out: av.container.OutputContainer, stream: av.AudioStream, seconds: float
) -> None:
    samples = int(seconds * stream.rate)
    chunk = 1024
    for start in range(0, samples, chunk):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, chunk), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = stream.rate
        frame.pts = start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """A valid media file with one audio stream and no video stream."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=8000)
        _write_silence(out, stream, seconds)
    return Path(path)


def write_zero_frame_video(path: Path) -> Path:
    """A well-formed Matroska file that declares a video stream but holds no video frame.

    (An audio track carries the only packets; MP4 muxers drop empty tracks, Matroska keeps them.)
    """
    path = Path(path)
    if path.suffix.lower() not in (".mkv", ".webm"):
        raise ValueError(f"zero-frame videos are written as Matroska; use .mkv, not {path.name}")
    with av.open(str(path), mode="w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p"
        _write_silence(out, out.add_stream("aac", rate=8000), 1.0)
    return path


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., GeneratedVideo]:
    """Factory ``make_video(path, codec=None, container=None, seconds=3, fps=10, size=(64, 48),
    timestamps=None, rotation=0, hflip=False, gop=None, bframes=None, draw=grey_index_frame,
    audio=False)`` (see :func:`write_video`).

    A bare file name is placed in the test's ``tmp_path``.
    """

    def factory(path: str | Path, **kwargs: object) -> GeneratedVideo:
        target = Path(path)
        if not target.is_absolute():
            target = tmp_path / target
        return write_video(target, **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture(scope="session")
def shared_video(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., GeneratedVideo]:
    """Like ``make_video`` with a bare name, but each file is written once per test session.

    Asking again for the same name with the same options returns the same video; the same name
    with different options is an error (it would overwrite a file another test relies on).
    """
    folder = tmp_path_factory.mktemp("shared_videos")
    written: dict[str, tuple[str, GeneratedVideo]] = {}

    def factory(name: str, **kwargs: object) -> GeneratedVideo:
        options = repr(sorted(kwargs.items()))
        if name in written:
            if written[name][0] != options:
                raise ValueError(f"shared video {name!r} already exists with other options")
            return written[name][1]
        video = write_video(folder / name, **kwargs)  # type: ignore[arg-type]
        written[name] = (options, video)
        return video

    return factory


@pytest.fixture(scope="session")
def decoded_frame_index() -> Callable[[np.ndarray], int]:
    """``frame_index``: which generated frame an upright decoded image [H, W, 3] shows."""
    return frame_index


@pytest.fixture
def broken_videos(tmp_path: Path) -> dict[str, Path]:
    """One path per kind of bad input: missing, empty, truncated, text, audio_only, zero_frames."""
    folder = tmp_path / "broken"
    folder.mkdir()
    good = write_video(folder / "good.mp4", seconds=2.0, fps=10.0)
    data = good.path.read_bytes()
    truncated = folder / "truncated.mp4"
    # PyAV writes the mp4 index (moov) at the end, so cutting the tail loses the index.
    truncated.write_bytes(data[: len(data) // 2])
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    text = folder / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    return {
        "missing": folder / "does_not_exist.mp4",
        "empty": empty,
        "truncated": truncated,
        "text": text,
        "audio_only": write_audio_only(folder / "audio_only.m4a"),
        "zero_frames": write_zero_frame_video(folder / "zero_frames.mkv"),
    }
