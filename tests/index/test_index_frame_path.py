"""Each frame decoded and encoded once: the frame path equals the per-window path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from frame_helpers import FakeFrameEncoder, random_model_frames, write_noise_video
from index_helpers import FakeEncoder, tiny_config, write_video

from vtrkit.config import BackboneConfig, Config, ModelConfig
from vtrkit.data.sampling import FrameSampling
from vtrkit.index import build_index
from vtrkit.index.build.frame_decoding import WindowSpec, decode_video
from vtrkit.index.build.pipeline import DecodeAhead, FramePipeline
from vtrkit.index.build.window_decoding import decode_windows
from vtrkit.index.storage.library import Library
from vtrkit.inference import FrameEncoder, ModelEncoder
from vtrkit.models.build import build_model


def tiny_encoder(kind: str, precision: str = "fp32", batch_size: int = 2) -> ModelEncoder:
    torch.manual_seed(0)
    cfg = tiny_config()
    if kind != "xclip":
        arch = cfg.model.backbone.arch
        cfg = Config(
            data=cfg.data,
            model=ModelConfig(
                kind=kind, temporal_layers=1, temporal_heads=2, backbone=BackboneConfig(arch=arch)
            ),
        )
    model, tokenizer = build_model(cfg.model, cfg.data)
    return ModelEncoder(model, tokenizer, cfg.data, batch_size=batch_size, precision=precision)


@pytest.mark.parametrize("kind", ["meanP", "seqTransf", "xclip", "clip2tv"])
def test_video_features_from_frame_features_equal_encode_video(kind):
    encoder = tiny_encoder(kind)
    assert isinstance(encoder, FrameEncoder) and encoder.encodes_frames
    frames, mask = random_model_frames(5, 3, 16)
    whole = encoder.encode_video_windows(frames, mask)
    features = encoder.encode_frame_images(frames.flatten(0, 1)).view(5, 3, -1)
    split = encoder.windows_from_frame_features(features, mask)
    torch.testing.assert_close(split.video, whole.video, rtol=0, atol=1e-6)
    torch.testing.assert_close(split.frames, whole.frames, rtol=0, atol=1e-6)
    assert torch.equal(split.mask, whole.mask)


def test_a_model_that_overrides_encode_video_alone_is_encoded_window_by_window():
    encoder = tiny_encoder("seqTransf")
    model = encoder.model

    class Custom(type(model)):
        def encode_video(self, frames, video_mask):
            return super().encode_video(frames, video_mask * 1 > 0)

    model.__class__ = Custom
    assert not ModelEncoder(model, encoder.tokenizer, encoder.data_cfg).encodes_frames


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """Two 9-s videos (3-s windows every 1 s: frames shared by neighbouring windows) and a
    4-s one (shorter than two windows: one window)."""
    root = tmp_path_factory.mktemp("frame-path")
    write_noise_video(root / "a.mp4", 9)
    write_noise_video(root / "b.mp4", 9, size=(48, 64))
    write_video(root / "c.mp4", [(255, 0, 0), (0, 0, 255)] * 2)
    return root


@pytest.mark.parametrize("kind", ["seqTransf", "xclip"])
def test_stored_windows_equal_the_per_window_path(overlapping, kind, tmp_path):
    encoder = tiny_encoder(kind)
    spec = WindowSpec(FrameSampling(3, 1.0, 16), 3.0, 1.0)
    paths = sorted(overlapping.glob("*.mp4"))
    pipeline = FramePipeline(encoder, batch_windows=2, frame_batch=5)

    def decode(path, emit):
        return decode_video(path, spec, emit)

    with DecodeAhead(paths, decode, workers=2) as decoded:
        done = list(pipeline.run(iter(decoded)))
    assert [d.job for d in done] == paths
    window_frames = 0
    for d in done:
        ref = decode_windows(d.job, spec.sampling, 3.0, 1.0)
        assert d.plan.windows == ref.windows
        want = encoder.encode_video_windows(ref.frames, ref.mask)
        torch.testing.assert_close(d.features.video, want.video, rtol=0, atol=1e-5)
        torch.testing.assert_close(d.features.frames, want.frames, rtol=0, atol=1e-5)
        assert torch.equal(d.features.mask, want.mask)
        assert d.plan.thumbnails == ref.thumbnails
        window_frames += int(ref.mask.sum())
    # Overlapping windows share frames: each distinct frame was encoded once.
    assert pipeline.frames_encoded == sum(d.plan.frames for d in done) < window_frames

    # The build stores exactly these features (as float16) under the same windows.
    report = build_index(overlapping, tmp_path / "lib", encoder, window_length=3, window_stride=1)
    assert report.frames == pipeline.frames_encoded
    lib = Library.open(tmp_path / "lib")
    try:
        for d in done:
            video = lib.catalog.video_by_path(str(d.job))
            windows = lib.catalog.windows(video.id)
            assert [(w.start, w.end) for w in windows] == d.plan.windows
            rows = np.array([w.row for w in windows])
            np.testing.assert_array_equal(
                lib.store.pooled(rows), d.features.video.numpy().astype(np.float16)
            )
    finally:
        lib.close()


def test_frame_and_window_encoders_build_the_same_index(overlapping, tmp_path):
    """The fallback for encoders without a frame path stores the same features."""
    frame_encoder, window_encoder = FakeFrameEncoder(), FakeEncoder()
    build_index(overlapping, tmp_path / "frames", frame_encoder, window_length=3, window_stride=1)
    build_index(overlapping, tmp_path / "windows", window_encoder, window_length=3, window_stride=1)
    assert frame_encoder.windows_encoded == window_encoder.windows_encoded
    assert 0 < frame_encoder.frames_encoded < 3 * window_encoder.windows_encoded
    a, b = Library.open(tmp_path / "frames"), Library.open(tmp_path / "windows")
    try:
        assert [(w.start, w.end) for w in a.catalog.windows()] == [
            (w.start, w.end) for w in b.catalog.windows()
        ]
        rows = np.arange(a.store.rows)
        np.testing.assert_allclose(a.store.pooled(rows), b.store.pooled(rows), atol=1e-3)
        np.testing.assert_array_equal(a.store.mask(rows), b.store.mask(rows))
    finally:
        a.close()
        b.close()


def test_batches_fill_across_videos():
    """Short clips still fill the encoder's batch: batch boundaries ignore video boundaries."""
    encoder = FakeFrameEncoder(FrameSampling(2, 1.0, 8))
    sizes = []
    original = encoder.encode_frame_images

    def spy(images):
        sizes.append(images.shape[0])
        return original(images)

    encoder.encode_frame_images = spy
    from vtrkit.index.build.frame_decoding import SampledFrame, VideoPlan

    def decode(count, emit):
        for key in range(count):
            emit(SampledFrame(key, torch.zeros(8, 8, 3, dtype=torch.uint8)))
        return VideoPlan(float(count), [(0.0, float(count))], [list(range(count))[:2]], [None])

    pipeline = FramePipeline(encoder, batch_windows=3)  # 6 frames per batch
    with DecodeAhead([1, 2, 1, 3, 2, 4], decode, workers=2) as decoded:
        done = list(pipeline.run(iter(decoded)))
    assert [d.job for d in done] == [1, 2, 1, 3, 2, 4]
    assert sizes[1:] == [6, 6, 1]  # the first call is the padding feature
    assert pipeline.frames_encoded == 13


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_agrees_with_fp32(precision):
    reference, reduced = tiny_encoder("xclip"), tiny_encoder("xclip", precision)
    assert reduced.fingerprint() == reference.fingerprint()
    frames, mask = random_model_frames(6, 3, 16, seed=3)
    want = reference.encode_video_windows(frames, mask)
    got = reduced.encode_video_windows(frames, mask)
    cosine = torch.nn.functional.cosine_similarity(got.video, want.video, dim=-1)
    assert cosine.min() > 0.99
    assert not torch.equal(got.video, want.video)  # it did run in another precision


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="--precision"):
        tiny_encoder("meanP", precision="fp8")


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from pathlib import Path

    from vtrkit.inference import resolve_precision

    real = Path.read_text

    def cpuinfo(flags):
        def read(self, *args, **kwargs):
            return f"flags\t: fpu {flags}\n" if str(self) == "/proc/cpuinfo" else real(self)

        return read

    monkeypatch.setattr(Path, "read_text", cpuinfo("avx2 avx512f avx512_bf16"))
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(Path, "read_text", cpuinfo("avx2 avx512f"))
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("int8", "cpu") == "int8"
    assert tiny_encoder("meanP", precision="auto").precision == "fp32"
