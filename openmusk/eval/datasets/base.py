"""The shared pieces of the published-layout readers: an in-memory item list and seeded splits.

Seeded split rule (for datasets published without a train/test split): within each class, items
(in the reader's sorted order) are permuted by ``numpy.random.default_rng(seed)`` and the first
``round(test_fraction * n)`` (at least 1, at most n - 1) go to ``test``, the rest to ``train``;
every class is therefore present in both splits, and a class with fewer than 2 items is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from openmusk.data.datasets import IMAGE_EXTENSIONS, ImageDataset

__all__ = ["PublishedDataset", "seeded_split", "select_split", "list_images", "require",
           "SPLIT_SEED", "TEST_FRACTION"]

SPLIT_SEED = 0
TEST_FRACTION = 0.3


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a FileNotFoundError saying which published file is missing."""
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} not found (is root the folder of the download?)")
    return path


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class PublishedDataset(ImageDataset):
    """Items read from a published layout: keys, an image source per item (a path or a function
    returning a PIL image), labels and/or captions."""

    def __init__(self, keys: Sequence[str], sources: Sequence[Path | Callable[[], Image.Image]],
                 labels: Sequence[int] | None = None, classes: Sequence[str] | None = None,
                 captions: Sequence[str] | None = None, transform: Callable | None = None,
                 image_hook: Callable[[Image.Image], Image.Image] | None = None):
        if not keys:
            raise ValueError("no items found in the published layout")
        self.keys, self.sources = list(keys), list(sources)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.classes = None if classes is None else list(classes)
        self.captions = None if captions is None else list(captions)
        self.transform, self.image_hook = transform, image_hook

    def load_image(self, i: int) -> Image.Image:
        """The i-th image as PIL RGB (after the reader's hook, e.g. BRACS's crop/pad)."""
        from openmusk.core.images import open_image

        src = self.sources[i]
        img = src() if callable(src) else open_image(src, str(src))
        img = img.convert("RGB")
        return self.image_hook(img) if self.image_hook is not None else img

    def subset(self, rows: Sequence[int]) -> "PublishedDataset":
        """The items at ``rows`` (in that order)."""
        pick = lambda xs: None if xs is None else [xs[r] for r in rows]  # noqa: E731
        return PublishedDataset(pick(self.keys), pick(self.sources), pick(self.labels), self.classes,
                                pick(self.captions), self.transform, self.image_hook)


def seeded_split(labels: Sequence[int], seed: int = SPLIT_SEED,
                 test_fraction: float = TEST_FRACTION) -> dict[str, np.ndarray]:
    """Stratified ``train``/``test`` rows (ascending) by the module's documented rule."""
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < 2:
            raise ValueError(f"seeded split: class {int(c)} has {len(members)} item(s); every class "
                             "needs 2 to appear in both train and test")
        n_test = min(len(members) - 1, max(1, int(round(test_fraction * len(members)))))
        test += rng.permutation(members)[:n_test].tolist()
    is_test = np.zeros(len(y), bool)
    is_test[test] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


def select_split(ds: PublishedDataset, split: str | None, seed: int = SPLIT_SEED,
                 test_fraction: float = TEST_FRACTION) -> PublishedDataset:
    """The whole set (split None) or the seeded ``train``/``test`` split of a dataset without one."""
    if split is None:
        return ds
    parts = seeded_split(ds.labels, seed, test_fraction)
    if split not in parts:
        raise ValueError(f"split {split!r}: this dataset is published without splits; the seeded "
                         f"splits are {sorted(parts)}")
    return ds.subset(parts[split].tolist())

