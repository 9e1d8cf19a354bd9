"""MUSK image transform against a hand computation with PIL + numpy on real H&E images."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openmusk.data.transforms import (
    MUSK_MEAN,
    MUSK_STD,
    center_crop,
    denormalize,
    get_transform,
    normalize,
    to_tensor,
)


def hand_transform(img: Image.Image, size: int) -> np.ndarray:
    """The released preprocessing written out step by step in numpy."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    arr = np.asarray(img.resize((new_w, new_h), Image.BICUBIC), dtype=np.float32)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    arr = arr[top : top + size, left : left + size] / np.float32(255)
    return ((arr - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def nest(real_dir: Path) -> Image.Image:
    """Real H&E of an ovarian carcinoma nest (1500 x 1500)."""
    return Image.open(real_dir / "hgsc_nest.jpg").convert("RGB")


def test_square_real_image_384(real_dir: Path) -> None:
    img = Image.open(real_dir / "he_tumor_1000px.png")
    out = get_transform()(img)
    assert out.shape == (3, 384, 384) and out.dtype == torch.float32
    assert torch.equal(out, torch.from_numpy(hand_transform(img.convert("RGB"), 384)))
    assert -1 <= out.min() < out.max() <= 1


@pytest.mark.parametrize("box", [(100, 50, 800, 567), (200, 0, 617, 700)])
def test_non_square_real_crop(nest: Image.Image, box: tuple[int, int, int, int]) -> None:
    img = nest.crop(box)
    out = get_transform(384)(img)
    assert out.shape == (3, 384, 384)
    assert torch.equal(out, torch.from_numpy(hand_transform(img, 384)))


@pytest.mark.parametrize("landscape", [True, False])
def test_centre_offset_rounds_half_to_even(nest: Image.Image, landscape: bool) -> None:
    # short side already 64, long side 69: offset (69 - 64) / 2 = 2.5 rounds to 2, not 3
    img = nest.crop((300, 300, 369, 364) if landscape else (300, 300, 364, 369))
    arr = np.asarray(img, dtype=np.float32) / np.float32(255)
    kept = arr[:, 2:66] if landscape else arr[2:66, :]
    shifted = arr[:, 3:67] if landscape else arr[3:67, :]
    out = get_transform(64)(img).numpy().transpose(1, 2, 0)
    assert np.array_equal(out, (kept - np.float32(0.5)) / np.float32(0.5))
    assert not np.array_equal(out, (shifted - np.float32(0.5)) / np.float32(0.5))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_inputs(nest: Image.Image, mode: str) -> None:
    img = nest.crop((0, 0, 300, 200)).convert(mode)
    out = get_transform(96)(img)
    assert out.shape == (3, 96, 96) and torch.isfinite(out).all()
    assert torch.equal(out, get_transform(96)(img.convert("RGB")))
    if mode == "L":
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_helpers(nest: Image.Image) -> None:
    t = to_tensor(nest.crop((0, 0, 50, 40)))
    assert t.shape == (3, 40, 50) and 0 <= t.min() < t.max() <= 1
    assert MUSK_MEAN == MUSK_STD == (0.5, 0.5, 0.5)
    assert torch.allclose(denormalize(normalize(t)), t, atol=1e-6)
    assert torch.equal(normalize(t.unsqueeze(0))[0], normalize(t))
    assert denormalize(torch.full((3, 2, 2), 3.0)).max() == 1
    with pytest.raises(ValueError):
        center_crop(nest.crop((0, 0, 50, 40)), 45)
    with pytest.raises(TypeError):
        get_transform()(np.zeros((8, 8, 3), dtype=np.uint8))
    transform = pickle.loads(pickle.dumps(get_transform(32)))
    assert transform.img_size == 32 and "32" in repr(transform)
