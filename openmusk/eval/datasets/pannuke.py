"""PanNuke (Gamper et al.) as published: three folds of numpy arrays, read as benign/malignant.

Layout (the owners' release, as the issue describes it and the Warwick download unpacks):
``Fold k/images/fold{k}/images.npy`` (N x 256 x 256 x 3 float64, 0..255),
``Fold k/images/fold{k}/types.npy`` (tissue names) and ``Fold k/masks/fold{k}/masks.npy``
(N x 256 x 256 x 6 instance maps; channel 0 = neoplastic cells).
Rule (the MUSK authors derived it into a CSV they do not ship): a patch is ``malignant`` when its
neoplastic channel has any non-zero pixel, else ``benign``. Splits: the published folds,
``train`` = folds 1 + 2, ``test`` = fold 3 (folds may also be named ``fold1``..``fold3``).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from openmusk.eval.datasets.base import PublishedDataset, require

__all__ = ["read_pannuke", "PANNUKE_CLASSES", "PANNUKE_SPLITS"]

PANNUKE_CLASSES = ["benign", "malignant"]
PANNUKE_SPLITS = {"train": (1, 2), "test": (3,)}


def _fold(root: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped images and the benign/malignant label of every patch of fold k."""
    images = require(root / f"Fold {k}" / "images" / f"fold{k}" / "images.npy", "PanNuke images")
    masks = require(root / f"Fold {k}" / "masks" / f"fold{k}" / "masks.npy", "PanNuke masks")
    img = np.load(images, mmap_mode="r")
    msk = np.load(masks, mmap_mode="r")
    if img.ndim != 4 or img.shape[-1] != 3 or msk.ndim != 4 or msk.shape[-1] != 6 \
            or len(img) != len(msk):
        raise ValueError(f"PanNuke fold {k}: images {img.shape} and masks {msk.shape} are not "
                         "N x H x W x 3 and N x H x W x 6")
    malignant = np.array([bool(np.any(msk[i, :, :, 0])) for i in range(len(msk))])
    return img, malignant.astype(np.int64)


def _patch(images: np.ndarray, i: int) -> Image.Image:
    """Patch i as PIL RGB (float 0..255 rounded to uint8)."""
    return Image.fromarray(np.clip(np.rint(images[i]), 0, 255).astype(np.uint8))


def read_pannuke(root: str | Path, split: str | None = None) -> PublishedDataset:
    """The patches of the split's folds (None: all three), labelled benign (0) / malignant (1)."""
    root = Path(root)
    if split is not None and split not in PANNUKE_SPLITS:
        raise ValueError(f"PanNuke split {split!r}: one of {sorted(PANNUKE_SPLITS)}")
    folds = PANNUKE_SPLITS[split] if split is not None else (1, 2, 3)
    keys, sources, labels = [], [], []
    for k in folds:
        img, lab = _fold(root, k)
        keys += [f"fold{k}/{i}" for i in range(len(img))]
        sources += [partial(_patch, img, i) for i in range(len(img))]
        labels += lab.tolist()
    return PublishedDataset(keys, sources, labels, PANNUKE_CLASSES)
