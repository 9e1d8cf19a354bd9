"""BACH / ICIAR 2018 (Aresta et al.) microscopy photos as published.

``ICIAR2018_BACH_Challenge/Photos/{Benign,InSitu,Invasive,Normal}/*.tif`` with a headerless
``microscopy_ground_truth.csv`` (``file name, class``) in ``Photos/``; labels come from that CSV
(a row naming a missing file is refused). No split is published: seeded stratified train/test.
"""
from __future__ import annotations

import csv
from pathlib import Path

from openmusk.eval.datasets.base import PublishedDataset, SPLIT_SEED, TEST_FRACTION, require, select_split

__all__ = ["read_bach", "BACH_CLASSES"]

BACH_CLASSES = ["Normal", "Benign", "InSitu", "Invasive"]


def read_bach(root: str | Path, split: str | None = None, seed: int = SPLIT_SEED,
              test_fraction: float = TEST_FRACTION) -> PublishedDataset:
    """The labelled photos (ground-truth CSV order), seeded split."""
    photos = require(Path(root) / "ICIAR2018_BACH_Challenge" / "Photos", "BACH")
    table = require(photos / "microscopy_ground_truth.csv", "BACH ground truth")
    lookup = {c: i for i, c in enumerate(BACH_CLASSES)}
    keys, paths, labels = [], [], []
    with table.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 2 or row[1].strip() not in lookup:
                raise ValueError(f"{table} line {n}: expected 'file,class' with class in {BACH_CLASSES}, "
                                 f"got {row}")
            name, label = row[0].strip(), row[1].strip()
            path = require(photos / label / name, f"{table} line {n}")
            keys.append(f"{label}/{name}")
            paths.append(path)
            labels.append(lookup[label])
    return select_split(PublishedDataset(keys, paths, labels, BACH_CLASSES), split, seed, test_fraction)
