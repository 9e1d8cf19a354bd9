"""Slides for the whole-slide tests: the real SVS region and a 3-level pyramidal TIFF made from it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MPP = 0.499


@pytest.fixture(scope="session")
def svs_path(real_dir: Path) -> Path:
    """The real Aperio SVS region (one level, 2220 x 2967, 0.499 µm/px)."""
    return real_dir / "cmu_small_region.svs"


@pytest.fixture(scope="session")
def svs_rgb(svs_path: Path) -> np.ndarray:
    """The SVS region's full-resolution pixels (H, W, 3)."""
    import openslide

    with openslide.OpenSlide(str(svs_path)) as s:
        return np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))


@pytest.fixture(scope="session")
def pyramid_path(tmp_path_factory: pytest.TempPathFactory, svs_rgb: np.ndarray) -> Path:
    """A tiled 3-level pyramidal TIFF (downsamples 1, 2, 4) of the SVS pixels with its resolution.

    Levels are consecutive full-resolution-flagged/reduced pages, which OpenSlide reads as a generic
    tiled TIFF; the resolution tags (pixels per centimetre) carry the mpp.
    """
    import tifffile

    path = tmp_path_factory.mktemp("pyramid") / "cmu_pyramid.tif"
    level = svs_rgb
    with tifffile.TiffWriter(path) as tw:
        for i in range(3):
            res = 1e4 / (MPP * 2 ** i)
            tw.write(level, tile=(256, 256), compression="zlib", photometric="rgb",
                     resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1)
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2   # 2x2 box filter
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
    return path


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random MUSK (embed 64, depth 2, 384 px): fast on CPU."""
    import torch

    import openmusk

    torch.manual_seed(0)
    return openmusk.create_model("musk_tiny_patch16_384")
