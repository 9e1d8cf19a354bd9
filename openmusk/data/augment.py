"""Pathology augmentations for pretraining: flips, greyscale, weak colour jitter, RandStainNA, fields of view.

The MUSK recipe (vertical flip 0.5, greyscale 0.2, weak colour jitter 0.8, RandStainNA stain
augmentation, x10/x20/x40 fields of view) written with PIL and numpy. Every random choice draws
from a ``numpy.random.Generator`` passed in, so a sample's augmentation is reproducible from its
seed (the pretraining data stream seeds one generator per sample).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance

from openmusk.core.config import path_field
from openmusk.data.transforms import normalize, to_tensor

__all__ = ["rgb_to_lab", "lab_to_rgb", "StainStatistics", "fit_stain_statistics", "randstainna",
           "color_jitter", "random_resized_crop", "AugmentConfig", "PathologyAugment",
           "to_model_tensor", "read_field_of_view", "random_fields_of_view", "FOV_MPP"]

# Magnification -> microns per pixel, the convention of the paper (x10 / x20 / x40).
FOV_MPP = {"x10": 1.0, "x20": 0.5, "x40": 0.25}

_M_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = np.array([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8/float in [0,255] (..., 3) -> CIE L*a*b* (D65) float64 (L in [0,100])."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = lin @ _M_RGB2XYZ.T / _WHITE_D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) (..., 3) -> sRGB uint8, clipped to the gamut."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE_D65
    lin = xyz @ np.linalg.inv(_M_RGB2XYZ).T
    lin = np.clip(lin, 0, 1)
    c = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, lin * 12.92)
    return np.clip(np.round(c * 255), 0, 255).astype(np.uint8)


@dataclass
class StainStatistics:
    """RandStainNA's stain template: mean and std, over images, of each LAB channel's mean and std."""

    mean_of_means: list[float]
    std_of_means: list[float]
    mean_of_stds: list[float]
    std_of_stds: list[float]
    n_images: int

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON (atomically)."""
        from openmusk.core.io import write_json
        return write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StainStatistics":
        """Read statistics written by :meth:`save`, naming the file when keys are wrong."""
        from openmusk.core.io import read_json
        d = read_json(path)
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"{path}: not a stain-statistics file ({e})") from e


def _lab_moments(img: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of an RGB image in LAB space."""
    lab = rgb_to_lab(np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img))
    flat = lab.reshape(-1, 3)
    return flat.mean(0), flat.std(0) + 1e-6


def fit_stain_statistics(images: Iterable[Image.Image | np.ndarray]) -> StainStatistics:
    """Fit RandStainNA statistics from a set of H&E images (tiles of the target cohort)."""
    means, stds = [], []
    for img in images:
        m, s = _lab_moments(img)
        means.append(m)
        stds.append(s)
    if len(means) < 2:
        raise ValueError(f"need at least 2 images to fit stain statistics, got {len(means)}")
    means, stds = np.stack(means), np.stack(stds)
    return StainStatistics(means.mean(0).tolist(), means.std(0).tolist(),
                           stds.mean(0).tolist(), stds.std(0).tolist(), len(means))


def randstainna(img: Image.Image, stats: StainStatistics, rng: np.random.Generator,
                std_scale: float = 1.0) -> Image.Image:
    """Re-standardise ``img`` in LAB to channel mean/std sampled from ``stats`` (RandStainNA)."""
    lab = rgb_to_lab(np.asarray(img.convert("RGB")))
    mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-6
    tgt_mean = rng.normal(stats.mean_of_means, np.asarray(stats.std_of_means) * std_scale)
    tgt_std = np.abs(rng.normal(stats.mean_of_stds, np.asarray(stats.std_of_stds) * std_scale))
    out = (lab - mean) / std * tgt_std + tgt_mean
    return Image.fromarray(lab_to_rgb(out))


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue of an RGB image by ``shift`` turns (in [-0.5, 0.5])."""
    h, s, v = img.convert("HSV").split()
    h = h.point(lambda x: int(x + shift * 255) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.02) -> Image.Image:
    """Weak colour jitter: brightness, contrast, saturation factors and hue shift, in random order."""
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(1 - brightness, 1 + brightness)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(1 - contrast, 1 + contrast)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(1 - saturation, 1 + saturation)),
        lambda im: _shift_hue(im, rng.uniform(-hue, hue)),
    ]
    for i in rng.permutation(len(ops)):
        img = ops[i](img)
    return img


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.6, 1.0)) -> Image.Image:
    """Crop a random square covering ``scale`` of the shorter side's square, resize to ``size`` (bicubic)."""
    w, h = img.size
    side = int(min(w, h) * np.sqrt(rng.uniform(*scale)))
    side = max(1, side)
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def to_model_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) with MUSK's normalisation (no resize or crop)."""
    return normalize(to_tensor(img)).contiguous()


@dataclass
class AugmentConfig:
    """The paper's pathology augmentations; probabilities are per image."""

    img_size: int = 384
    crop_scale: tuple[float, float] = (0.6, 1.0)
    p_vflip: float = 0.5
    p_hflip: float = 0.5
    p_grayscale: float = 0.2
    p_jitter: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    p_stain: float = 0.5
    stain_statistics: str | None = path_field(None)   # JSON written by StainStatistics.save
    stain_std_scale: float = 1.0


class PathologyAugment:
    """Image -> augmented model tensor: crop, flips, stain, jitter, greyscale (seeded by ``rng``)."""

    def __init__(self, cfg: AugmentConfig = AugmentConfig(), stats: StainStatistics | None = None):
        self.cfg = cfg
        self.stats = stats if stats is not None else (
            StainStatistics.load(cfg.stain_statistics) if cfg.stain_statistics else None)

    def augment(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Apply the augmentations to a PIL image and return a PIL image of ``img_size``."""
        c = self.cfg
        img = random_resized_crop(img.convert("RGB"), c.img_size, rng, tuple(c.crop_scale))
        if rng.random() < c.p_vflip:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        if rng.random() < c.p_hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.stats is not None and rng.random() < c.p_stain:
            img = randstainna(img, self.stats, rng, c.stain_std_scale)
        if rng.random() < c.p_jitter:
            img = color_jitter(img, rng, c.brightness, c.contrast, c.saturation, c.hue)
        if rng.random() < c.p_grayscale:
            img = img.convert("L").convert("RGB")
        return img

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """Augment and convert to a normalised (3, S, S) tensor."""
        return to_model_tensor(self.augment(img, rng))


def _slide_mpp(slide) -> float:
    """Level-0 microns per pixel of an OpenSlide, with a clear error when the slide lacks it."""
    import openslide
    mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    if mpp is None:
        raise ValueError("slide has no openslide.mpp-x property: fields of view need a known mpp")
    return float(mpp)


def read_field_of_view(slide, x: int, y: int, mpp: float, size: int) -> Image.Image:
    """Read a ``size``x``size`` image at ``mpp`` µm/px centred on level-0 pixel (x, y).

    The region spans ``size * mpp / slide_mpp`` level-0 pixels; it is read from the best pyramid
    level and resized (bicubic) to ``size``. ``slide`` is an ``openslide.OpenSlide``.
    """
    base = _slide_mpp(slide)
    span0 = size * mpp / base
    level = slide.get_best_level_for_downsample(span0 / size)
    ds = slide.level_downsamples[level]
    span_l = max(1, int(round(span0 / ds)))
    left, top = int(round(x - span0 / 2)), int(round(y - span0 / 2))
    region = slide.read_region((left, top), level, (span_l, span_l)).convert("RGB")
    return region.resize((size, size), Image.BICUBIC)


def _tissue_fraction(img: Image.Image) -> float:
    """Fraction of pixels with HSV saturation above 0.07 (stained tissue vs white glass)."""
    s = np.asarray(img.convert("HSV"))[..., 1]
    return float((s > 0.07 * 255).mean())


def random_fields_of_view(slide_path: str | os.PathLike, n: int, size: int,
                          rng: np.random.Generator,
                          mpps: Sequence[float] = tuple(FOV_MPP.values()),
                          min_tissue: float = 0.5, max_tries: int = 50) -> list[tuple[Image.Image, float, int, int]]:
    """Sample ``n`` tissue fields of view at random mpp from ``mpps``: (image, mpp, x, y) each.

    Centres are drawn uniformly so that the widest field stays inside the slide; a field is kept
    when at least ``min_tissue`` of it is tissue (up to ``max_tries`` draws per field).
    """
    import openslide
    out = []
    with openslide.OpenSlide(str(slide_path)) as slide:
        base = _slide_mpp(slide)
        w, h = slide.dimensions
        for _ in range(n):
            mpp = float(mpps[int(rng.integers(len(mpps)))])
            half = size * mpp / base / 2
            if 2 * half > min(w, h):
                raise ValueError(f"{slide_path}: a {size}px field at {mpp} µm/px ({2 * half:.0f} "
                                 f"level-0 px) does not fit in the {w}x{h} slide")
            for _ in range(max_tries):
                x = int(rng.uniform(half, w - half))
                y = int(rng.uniform(half, h - half))
                img = read_field_of_view(slide, x, y, mpp, size)
                if _tissue_fraction(img) >= min_tissue:
                    break
            out.append((img, mpp, x, y))
    return out
