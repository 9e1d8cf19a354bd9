"""BRACS RoIs (Brancati et al.) as published: ``BRACS_RoI/latest_version/{train,val,test}/<class>/``.

Class folders ``0_N, 1_PB, 2_UDH, 3_FEA, 4_ADH, 5_DCIS, 6_IC`` (the owners' release). Groupings
(ours, as the MUSK paper reports them): 6 classes merge N and PB; 3 classes are non-cancerous
(N, PB, UDH), pre-cancerous (FEA, ADH) and cancerous (DCIS, IC). Every RoI is centre-cropped,
or padded with white on a short side, to ``size`` x ``size`` (1792 px: 224 px at 5x in the 40x
scans) before the encoder's own resize, as the MUSK benchmark describes.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image

from openmusk.eval.datasets.base import PublishedDataset, list_images, require

__all__ = ["read_bracs", "BRACS_FOLDERS", "BRACS_GROUPS", "crop_or_pad"]

BRACS_FOLDERS = ["0_N", "1_PB", "2_UDH", "3_FEA", "4_ADH", "5_DCIS", "6_IC"]
BRACS_GROUPS = {"7": [0, 1, 2, 3, 4, 5, 6], "6": [0, 0, 1, 2, 3, 4, 5], "3": [0, 0, 0, 1, 1, 2, 2]}


def crop_or_pad(img: Image.Image, size: int, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Centre ``size`` x ``size`` window of ``img``: cropped where larger, padded (white) where smaller."""
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    if w >= size and h >= size:
        return img.crop((left, top, left + size, top + size))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(img, (-left, -top))
    return canvas


def read_bracs(root: str | Path, split: str | None = None, groups: str = "6",
               size: int | None = 1792) -> PublishedDataset:
    """RoIs of one split folder (None: train, val, test), labels by ``groups`` ("7", "6" or "3")."""
    if str(groups) not in BRACS_GROUPS:
        raise ValueError(f"BRACS groups {groups!r}: one of {sorted(BRACS_GROUPS)}")
    base = require(Path(root) / "BRACS_RoI" / "latest_version", "BRACS")
    mapping = BRACS_GROUPS[str(groups)]
    keys, paths, labels = [], [], []
    for part in ([split] if split is not None else ["train", "val", "test"]):
        for j, folder in enumerate(BRACS_FOLDERS):
            d = require(base / part / folder, "BRACS class folder")
            for p in list_images(d):
                keys.append(f"{part}/{folder}/{p.name}")
                paths.append(p)
                labels.append(mapping[j])
    classes = [f"class {i}" for i in range(max(mapping) + 1)]
    return PublishedDataset(keys, paths, labels, classes,
                            image_hook=partial(crop_or_pad, size=size) if size else None)
