"""Datasets published as class folders without a split: RenalCell and LC25000.

* RenalCell (Brummer et al., zenodo 6528599): folders ``blood, cancer, empty, normal, other,
  stroma`` (searched one level down too, as the zip may unpack into a parent folder).
* LC25000 (Borkowski et al.): ``lung_image_sets/{lung_aca,lung_n,lung_scc}/`` and
  ``colon_image_sets/{colon_aca,colon_n}/`` (as in the owners' release README).
Both get the seeded stratified train/test split of :mod:`openmusk.eval.datasets.base`.
"""
from __future__ import annotations

from pathlib import Path

from openmusk.eval.datasets.base import (PublishedDataset, SPLIT_SEED, TEST_FRACTION, list_images, require,
                                         select_split)

__all__ = ["read_renalcell", "read_lc25000", "RENALCELL_CLASSES", "LC25000_FOLDERS"]

RENALCELL_CLASSES = ["blood", "cancer", "normal", "other", "stroma", "empty"]  # the spec's order
LC25000_FOLDERS = ["lung_image_sets/lung_aca", "lung_image_sets/lung_n", "lung_image_sets/lung_scc",
                   "colon_image_sets/colon_aca", "colon_image_sets/colon_n"]


def _from_folders(root: Path, folders: list[str], what: str) -> PublishedDataset:
    keys, paths, labels = [], [], []
    for j, folder in enumerate(folders):
        for p in list_images(require(root / folder, what)):
            keys.append(f"{folder}/{p.name}")
            paths.append(p)
            labels.append(j)
    return PublishedDataset(keys, paths, labels, [Path(f).name for f in folders])


def read_renalcell(root: str | Path, split: str | None = None, seed: int = SPLIT_SEED,
                   test_fraction: float = TEST_FRACTION) -> PublishedDataset:
    """RenalCell tiles by class folder, seeded split."""
    root = Path(root)
    if not (root / RENALCELL_CLASSES[0]).is_dir():
        inner = [d for d in sorted(root.iterdir()) if (d / RENALCELL_CLASSES[0]).is_dir()] \
            if root.is_dir() else []
        root = inner[0] if len(inner) == 1 else root
    ds = _from_folders(root, RENALCELL_CLASSES, "RenalCell class folder")
    return select_split(ds, split, seed, test_fraction)


def read_lc25000(root: str | Path, split: str | None = None, seed: int = SPLIT_SEED,
                 test_fraction: float = TEST_FRACTION) -> PublishedDataset:
    """LC25000 lung and colon tiles (5 classes), seeded split."""
    ds = _from_folders(Path(root), LC25000_FOLDERS, "LC25000 class folder")
    return select_split(ds, split, seed, test_fraction)
