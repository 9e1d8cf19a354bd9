"""WSSS4LUAD (Han et al.) as published, read as single-label tissue patches.

``1.training/<id>-[t, s, n].png``: the file name carries the image-level labels (tumour, stroma,
normal). ``2.validation/`` and ``3.testing/`` hold ``img/<id>.png`` with a pixel mask
``mask/<id>.png`` (0 tumour, 1 stroma, 2 normal, 3 background, as the challenge's palette
masks store them). Rule: a patch belongs to a class only when exactly one tissue type is present
(one label set in the name; one of 0/1/2 in the mask); mixed patches are left out. Splits: the
published folders (``train`` = 1.training, ``val`` = 2.validation, ``test`` = 3.testing).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from openmusk.eval.datasets.base import PublishedDataset, list_images, require

__all__ = ["read_wsss4luad", "WSSS_CLASSES", "WSSS_FOLDERS", "name_labels"]

WSSS_CLASSES = ["tumor", "stroma", "normal"]
WSSS_FOLDERS = {"train": "1.training", "val": "2.validation", "test": "3.testing"}
_NAME = re.compile(r"\[\s*([01])\s*,\s*([01])\s*,\s*([01])\s*\]")


def name_labels(name: str) -> list[int]:
    """The [tumour, stroma, normal] flags in a training file name."""
    m = _NAME.search(name)
    if m is None:
        raise ValueError(f"WSSS4LUAD: {name!r} does not end in a label list like '-[1, 0, 1]'")
    return [int(g) for g in m.groups()]


def _mask_labels(mask: Path) -> list[int]:
    """[tumour, stroma, normal] presence in a pixel mask (3 = background ignored)."""
    values = np.unique(np.asarray(Image.open(mask)))
    return [int(c in values) for c in range(3)]


def read_wsss4luad(root: str | Path, split: str | None = None) -> PublishedDataset:
    """Single-tissue patches of one split (None: all three)."""
    root = Path(root)
    keys, paths, labels = [], [], []
    for part in ([split] if split is not None else list(WSSS_FOLDERS)):
        if part not in WSSS_FOLDERS:
            raise ValueError(f"WSSS4LUAD split {part!r}: one of {sorted(WSSS_FOLDERS)}")
        folder = require(root / WSSS_FOLDERS[part], "WSSS4LUAD")
        if part == "train":
            items = [(p, name_labels(p.stem)) for p in list_images(folder)]
        else:
            items = [(p, _mask_labels(require(folder / "mask" / p.name, "WSSS4LUAD mask")))
                     for p in list_images(require(folder / "img", "WSSS4LUAD images"))]
        for p, flags in items:
            if sum(flags) == 1:
                keys.append(p.relative_to(root).as_posix())
                paths.append(p)
                labels.append(flags.index(1))
    return PublishedDataset(keys, paths, labels, WSSS_CLASSES)
