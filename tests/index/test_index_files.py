"""Finding videos (folders, list files) and encoding thumbnails."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from vtrkit.index.build.incremental import collect_videos, hash_file
from vtrkit.index.build.thumbnails import encode_jpeg


def test_collect_from_folder_list_and_single_file(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.mp4", "a/deep/y.MKV", "a/notes.txt", "a/.hidden.mp4", "z.webm"):
        (tmp_path / name).write_bytes(b"data")
    found = collect_videos(tmp_path)
    assert found == sorted(
        p.resolve() for p in (tmp_path / "a/x.mp4", tmp_path / "a/deep/y.MKV", tmp_path / "z.webm")
    )
    listing = tmp_path / "list.txt"
    listing.write_text("# my videos\na/x.mp4\n\n" + str(tmp_path / "z.webm") + "\n")
    assert collect_videos(listing) == [
        (tmp_path / "a/x.mp4").resolve(),
        (tmp_path / "z.webm").resolve(),
    ]
    # A single file is taken whatever its extension (so a misnamed one gets tried and reported).
    odd = tmp_path / "clip.bin"
    odd.write_bytes(b"x")
    assert collect_videos(odd) == [odd.resolve()]
    listing.write_text("missing.mp4\n")
    with pytest.raises(FileNotFoundError, match=r"list.txt:1"):
        collect_videos(listing)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        collect_videos(tmp_path / "nope")


def test_hash_depends_on_content_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"1" * 3_000_000)
    b.write_bytes(b"1" * 3_000_000)
    assert hash_file(a) == hash_file(b)
    b.write_bytes(b"1" * 2_999_999 + b"2")
    assert hash_file(a) != hash_file(b)


def test_jpeg_round_trip_and_quality():
    rng = np.random.default_rng(0)
    smooth = np.zeros((33, 47, 3), np.uint8)  # odd sizes are legal with 4:4:4 chroma
    smooth[:, :20] = (200, 30, 10)
    smooth[:, 20:] = (10, 40, 220)
    data = encode_jpeg(smooth)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    with av.open(io.BytesIO(data)) as c:
        back = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert back.shape == smooth.shape
    assert np.abs(back.astype(int) - smooth).mean() < 3
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert len(encode_jpeg(noisy, 2)) > len(encode_jpeg(noisy, 10)) > len(encode_jpeg(noisy, 31))
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg(noisy.astype(np.float32))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(noisy, 1)
