"""CLIP preprocessing in torch against Pillow (CLIP's reference resampler) and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vtrkit.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    Orientation,
    center_crop,
    normalize,
    preprocess,
    resize_and_crop,
    resize_short_side,
    short_side_size,
    to_model_input,
)


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A natural-looking uint8 RGB image [H, W, 3] (random low-frequency field plus fine noise)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, max(2, height // 8), max(2, width // 8))))
    field = torch.nn.functional.interpolate(coarse * 230, size=(height, width), mode="bilinear")
    noise = torch.from_numpy(rng.normal(0, 8, size=(1, 3, height, width)))
    image = (field + noise).clamp(0, 255).round().to(torch.uint8)
    return image[0].permute(1, 2, 0).numpy()


def pil_clip_transform(image: np.ndarray, size: int) -> np.ndarray:
    """CLIP's preprocessing with Pillow: Resize(size, BICUBIC) + CenterCrop(size), uint8 [S, S, 3]."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w = size if width <= height else int(width * scale)
    new_h = size if height <= width else int(height * scale)
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def test_short_side_size_truncates_the_long_side():
    assert short_side_size(240, 320, 224) == (224, 298)  # 298.67 truncated
    assert short_side_size(320, 240, 224) == (298, 224)
    assert short_side_size(48, 64, 224) == (224, 298)
    assert short_side_size(100, 100, 224) == (224, 224)
    assert short_side_size(720, 1280, 224) == (224, 398)


@pytest.mark.parametrize(
    ("height", "width"), [(240, 320), (48, 64), (320, 240), (272, 640), (100, 100)]
)
def test_resize_matches_pillow_bicubic(height, width):
    image = smooth_image(height, width, seed=height + width)
    ours = resize_and_crop(torch.from_numpy(image)[None], 224)[0].numpy().astype(int)
    reference = pil_clip_transform(image, 224).astype(int)
    diff = np.abs(ours - reference)
    # Same algorithm in fixed point; the only differences are rare off-by-one roundings.
    assert diff.max() <= 2
    assert (diff == 0).mean() > 0.98


def test_uint8_resize_saturates_where_float_bicubic_overshoots():
    # A hard black/white edge: bicubic rings beyond [0, 255] in float.
    image = torch.zeros(1, 3, 60, 60, dtype=torch.uint8)
    image[..., 30:] = 255
    as_uint8 = resize_short_side(image, 224)
    as_float = resize_short_side(image.float(), 224)
    assert as_uint8.dtype == torch.uint8 and as_float.dtype == torch.float32
    assert as_float.max() > 255 and as_float.min() < 0
    clamped = as_float.clamp(0, 255)
    assert (clamped - as_uint8.float()).abs().max() <= 2


def test_resize_leaves_images_already_at_size_untouched():
    image = torch.randint(0, 256, (2, 3, 224, 300), dtype=torch.uint8)
    assert resize_short_side(image, 224) is image


def test_center_crop_offsets_follow_torchvision_rounding():
    def crop_origin(height: int, width: int) -> tuple[int, int]:
        grid = torch.arange(height * width).view(1, height, width)
        corner = int(center_crop(grid, 4)[0, 0, 0])
        return divmod(corner, width)

    assert crop_origin(4, 10) == (0, 3)  # (10-4)/2 = 3
    assert crop_origin(4, 11) == (0, 4)  # 3.5 rounds to even: 4
    assert crop_origin(4, 9) == (0, 2)  # 2.5 rounds to even: 2
    assert crop_origin(7, 4) == (2, 0)  # 1.5 rounds to 2
    with pytest.raises(ValueError, match="at least"):
        center_crop(torch.zeros(1, 3, 3, 10), 4)


def test_normalize_known_values():
    mean_image = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(normalize(mean_image), torch.zeros(1, 3, 2, 2), atol=1e-7)
    ones = normalize(torch.ones(1, 3, 1, 1)).flatten()
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(ones, expected)
    with pytest.raises(TypeError, match="float"):
        normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))


def test_preprocess_matches_clip_pipeline_in_pillow():
    frames = np.stack([smooth_image(90, 160, seed=s) for s in range(3)])
    ours = preprocess(torch.from_numpy(frames), 64)
    assert ours.shape == (3, 3, 64, 64) and ours.dtype == torch.float32
    reference = np.stack([pil_clip_transform(f, 64) for f in frames]).astype(np.float32) / 255.0
    reference = (reference - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    reference = torch.from_numpy(reference.astype(np.float32)).permute(0, 3, 1, 2)
    # At most 2 of 255 levels apart, divided by the smallest std.
    assert (ours - reference).abs().max() <= 2 / 255 / min(CLIP_STD) + 1e-5
    # The cache path (uint8 resized frames, normalised later) is exactly the same computation.
    cached = resize_and_crop(torch.from_numpy(frames), 64)
    assert torch.equal(to_model_input(cached), ours)


def test_preprocess_value_range():
    frames = torch.from_numpy(np.stack([np.zeros((50, 50, 3)), np.full((50, 50, 3), 255)]))
    out = preprocess(frames.to(torch.uint8), 32)
    low = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    high = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(out[0], low.view(3, 1, 1).expand(3, 32, 32))
    assert torch.allclose(out[1], high.view(3, 1, 1).expand(3, 32, 32))


def test_preprocess_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        preprocess(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 16)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(torch.zeros(2, 32, 32, 3), 16)


def display_matrix(clockwise: float, hflip: bool = False) -> list[int]:
    """FFmpeg's av_display_rotation_set(clockwise) then av_display_matrix_flip(hflip, False)."""
    radians = -math.radians(clockwise)
    c, s = math.cos(radians), math.sin(radians)
    m = [0.0] * 9
    m[0], m[1], m[3], m[4] = c, -s, s, c
    matrix = [round(v * 65536) for v in m]
    matrix[8] = 1 << 30
    if hflip:
        for i in (0, 3, 6):
            matrix[i] = -matrix[i]
    return matrix


@pytest.mark.parametrize("clockwise", [0, 90, 180, 270])
@pytest.mark.parametrize("hflip", [False, True])
def test_orientation_from_display_matrix(clockwise, hflip):
    stored = torch.arange(2 * 3 * 1).view(2, 3, 1)
    orientation = Orientation.from_display_matrix(display_matrix(clockwise, hflip))
    assert orientation is not None
    expected = np.rot90(stored.numpy(), k=-clockwise // 90)  # np.rot90 turns counter-clockwise
    if hflip:
        expected = np.fliplr(expected)
    upright = orientation.apply(stored)
    assert np.array_equal(upright.numpy(), expected)
    assert orientation.upright_size(3, 2) == (expected.shape[1], expected.shape[0])
    if not hflip:
        assert orientation.clockwise_degrees == clockwise


def test_orientation_rejects_oblique_matrices():
    assert Orientation.from_display_matrix(display_matrix(45)) is None
    assert Orientation.from_display_matrix([0] * 9) is None
