"""FrameSampling: the one value for (num_frames, fps, image_size), and what still reads the same.

The persisted forms that carry a sampling (frame-cache keys, index catalogs, backbone sources)
keep the flat keys they had before the value existed; the index ones are pinned in
tests/index/test_index_storage.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from test_decode import SIZE, VIDEO_KINDS, assert_matches_reference, reference_sample

from vtrkit.config import DataConfig
from vtrkit.data.cache import CACHE_VERSION, FrameCache
from vtrkit.data.decode import load_frames, read_sampled_frames
from vtrkit.data.sampling import FrameSampling
from vtrkit.data.transforms import pad_clip, resize_and_crop, to_model_input


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": True}, "num_frames"),
        ({"fps": 0.0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": math.inf}, "fps"),
        ({"fps": math.nan}, "fps"),
        ({"fps": "1"}, "fps"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 16.0}, "image_size"),
    ],
)
def test_bad_values_raise_value_errors_naming_the_field(values, field):
    with pytest.raises(ValueError, match=field) as caught:
        FrameSampling(**values)
    assert repr(next(iter(values.values()))) in str(caught.value)
    # fps keeps the wording decoding has always used.
    if field == "fps":
        assert "fps must be a positive number of frames per second" in str(caught.value)


def test_values_are_normalised_frozen_and_round_trip_through_a_dict():
    sampling = FrameSampling(num_frames=4, fps=2, image_size=32)
    assert sampling == FrameSampling(4, 2.0, 32) and hash(sampling) == hash(
        FrameSampling(4, 2.0, 32)
    )
    assert type(sampling.fps) is float and sampling.span == 2.0
    assert FrameSampling() == FrameSampling(12, 1.0, 224)
    with pytest.raises(AttributeError):
        sampling.fps = 3.0  # type: ignore[misc]
    assert asdict(sampling) == {"num_frames": 4, "fps": 2.0, "image_size": 32}
    assert FrameSampling.from_dict(asdict(sampling)) == sampling
    # As an index catalog stores them: strings.
    assert (
        FrameSampling.from_dict({"num_frames": "4", "fps": "2.0", "image_size": "32"}) == sampling
    )


def test_data_config_sampling_is_its_three_keys():
    cfg = DataConfig(num_frames=5, fps=0.5, image_size=48)
    assert cfg.sampling == FrameSampling(num_frames=5, fps=0.5, image_size=48)
    assert DataConfig().sampling == FrameSampling()
    # The YAML format is unchanged: the three keys, no "sampling" key.
    dumped = cfg.model_dump()
    assert (dumped["num_frames"], dumped["fps"], dumped["image_size"]) == (5, 0.5, 48)
    assert "sampling" not in dumped


@pytest.mark.parametrize("window", [None, (1.0, 3.5)])
def test_load_frames_gives_the_reference_frames(shared_video, window):
    """load_frames with a FrameSampling equals the independent SPEC reference of test_decode,
    normalised and padded: the same frames as the loose (num_frames, fps, size) call gave."""
    video = shared_video("h264_bframes.mp4", **VIDEO_KINDS["h264_bframes.mp4"])
    sampling = DataConfig(num_frames=6, fps=2.0, image_size=SIZE).sampling
    frames, mask, info = load_frames(video.path, sampling, window)
    images, times = reference_sample(video.path, 6, 2.0, window)
    expected = to_model_input(resize_and_crop(torch.from_numpy(np.stack(images)), SIZE))
    want_frames, want_mask = pad_clip(expected, 6)
    assert frames.shape == (6, 3, SIZE, SIZE) and info.num_sampled == len(times)
    assert torch.equal(frames, want_frames) and torch.equal(mask, want_mask)
    pixels, stamps, _ = read_sampled_frames(video.path, sampling, window, seek=False)
    assert_matches_reference(video.path, pixels, stamps, sampling, window)


def test_frame_cache_keys_are_those_of_existing_caches(shared_video, tmp_path):
    """The key hashes the same fields as before FrameSampling, so existing caches still hit."""
    video = shared_video("h264_bframes.mp4", **VIDEO_KINDS["h264_bframes.mp4"])
    sampling = FrameSampling(4, 2.0, SIZE)
    path = video.path.resolve()
    stat = path.stat()
    identity = {
        "v": CACHE_VERSION,
        "path": str(path),
        "mtime_ns": stat.st_mtime_ns,
        "bytes": stat.st_size,
        "num_frames": 4,
        "fps": 2.0,
        "window": [1.0, 3.0],
        "size": SIZE,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    assert FrameCache(tmp_path).key(video.path, sampling, (1.0, 3.0)) == key
    assert FrameCache(tmp_path).key(video.path, replace(sampling, fps=2), (1, 3)) == key
