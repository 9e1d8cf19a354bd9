"""Osteosarcoma tumour assessment (TCIA, Arunachalam et al.) as published.

``Training-Set-{1,2}/set<k>/*.jpg`` and ``ML_Features_1144.csv`` whose ``image.name`` names a tile
and ``classification`` is ``Non-Tumor``, ``Viable``, ``Non-Viable-Tumor`` or the mixed
``viable: non-viable``. Rule: mixed tiles (both viable and necrotic tumour) are left out, as a
single-label benchmark cannot score them; ``Viable`` is the viable-tumour class. The CSV spells
names with spaces where the files have hyphens (``Case 3 A1-1 - 1`` is ``Case-3-A1-1-1.jpg``, the
mapping other loaders of this collection use): a name is matched as given, then with spaces as
hyphens and ``---`` as ``-``, with or without the extension. No split is published: seeded
stratified train/test (:mod:`openmusk.eval.datasets.base`).
"""
from __future__ import annotations

import csv
from pathlib import Path

from openmusk.eval.datasets.base import (PublishedDataset, SPLIT_SEED, TEST_FRACTION, list_images, require,
                                         select_split)

__all__ = ["read_osteo", "OSTEO_CLASSES", "OSTEO_MIXED"]

OSTEO_CLASSES = ["Non-Tumor", "Viable", "Non-Viable-Tumor"]
OSTEO_MIXED = "viable: non-viable"


def read_osteo(root: str | Path, split: str | None = None, seed: int = SPLIT_SEED,
               test_fraction: float = TEST_FRACTION) -> PublishedDataset:
    """Labelled tiles (mixed ones left out), seeded split."""
    root = Path(root)
    table = require(root / "ML_Features_1144.csv", "Osteosarcoma")
    files: dict[str, Path] = {}
    for folder in sorted(root.glob("Training-Set-*/set*")):
        for p in list_images(folder):
            files.setdefault(p.name, p)
            files.setdefault(p.stem, p)
    lookup = {c.lower(): i for i, c in enumerate(OSTEO_CLASSES)}
    keys, paths, labels = [], [], []
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        for col in ("image.name", "classification"):
            if col not in (reader.fieldnames or []):
                raise ValueError(f"{table}: missing column {col!r}; found {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            label = row["classification"].strip()
            if label.lower() == OSTEO_MIXED:
                continue
            if label.lower() not in lookup:
                raise ValueError(f"{table} line {n}: classification {label!r} is not one of "
                                 f"{OSTEO_CLASSES + [OSTEO_MIXED]}")
            name = row["image.name"].strip()
            hyphens = name.replace(" ", "-").replace("---", "-")
            path = next((files[n] for n in (name, Path(name).stem, hyphens, Path(hyphens).stem)
                         if n in files), None)
            if path is None:
                raise FileNotFoundError(f"{table} line {n}: no image {name!r} under "
                                        f"{root}/Training-Set-*/set*/")
            keys.append(path.relative_to(root).as_posix())
            paths.append(path)
            labels.append(lookup[label.lower()])
    return select_split(PublishedDataset(keys, paths, labels, OSTEO_CLASSES), split, seed, test_fraction)
