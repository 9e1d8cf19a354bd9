"""MUSK image preprocessing: bicubic shorter-side resize, centre crop, [0,1], mean/std 0.5.

Reproduces torchvision's ``Resize(S, BICUBIC, antialias=True) -> CenterCrop(S) -> ToTensor ->
Normalize(0.5, 0.5)`` on PIL images exactly, with PIL, numpy and torch only.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MUSK_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
MUSK_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEFAULT_IMG_SIZE = 384


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Resize with PIL BICUBIC so the shorter side is ``size`` (long side ``int(size * long / short)``)."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Centre ``size`` x ``size`` crop with offsets ``int(round((side - size) / 2))`` (half to even)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}x{size} crop")
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image (converted to RGB) as a float32 (3, H, W) tensor in [0, 1]."""
    from openmusk.core.images import to_rgb

    arr = np.array(to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255)


def _channel_stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MUSK mean and std shaped to broadcast over (..., 3, H, W) like ``t``."""
    mean = torch.tensor(MUSK_MEAN, dtype=t.dtype, device=t.device).view(3, 1, 1)
    std = torch.tensor(MUSK_STD, dtype=t.dtype, device=t.device).view(3, 1, 1)
    return mean, std


def normalize(t: torch.Tensor) -> torch.Tensor:
    """Map a [0, 1] image tensor (..., 3, H, W) to the model's input range."""
    mean, std = _channel_stats(t)
    return (t - mean) / std


def denormalize(t: torch.Tensor) -> torch.Tensor:
    """Invert :func:`normalize` and clamp to [0, 1] (for visualisation)."""
    mean, std = _channel_stats(t)
    return (t * std + mean).clamp(0, 1)


class MuskTransform:
    """PIL image -> normalised float32 (3, S, S) tensor: the released MUSK preprocessing."""

    def __init__(self, img_size: int = DEFAULT_IMG_SIZE) -> None:
        """Set the output side ``img_size`` (384 for the released model)."""
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        self.img_size = img_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Convert to RGB, resize the shorter side, centre-crop, scale to [0, 1] and normalise."""
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        from openmusk.core.images import to_rgb

        img = center_crop(resize_shorter_side(to_rgb(img), self.img_size), self.img_size)
        return normalize(to_tensor(img))

    def __repr__(self) -> str:
        """Readable description."""
        return f"MuskTransform(img_size={self.img_size}, mean={MUSK_MEAN}, std={MUSK_STD})"


def get_transform(img_size: int = DEFAULT_IMG_SIZE) -> MuskTransform:
    """The released MUSK preprocessing for ``img_size`` x ``img_size`` inputs (picklable for workers)."""
    return MuskTransform(img_size)
