"""MHIST (Wei et al.) as published: ``images/`` and ``annotations.csv``.

Checked against the owners' dataset page: ``annotations.csv`` has ``Image Name, Majority Vote
Label, Number of Annotators who Selected SSA (Out of 7), Partition``; labels ``HP``/``SSA``;
partitions ``train``/``test``; image files are ``images/<Image Name>``.
"""
from __future__ import annotations

import csv
from pathlib import Path

from openmusk.eval.datasets.base import PublishedDataset, require

__all__ = ["read_mhist", "MHIST_CLASSES"]

MHIST_CLASSES = ["HP", "SSA"]


def read_mhist(root: str | Path, split: str | None = None) -> PublishedDataset:
    """Rows whose ``Partition`` is ``split`` (None: all)."""
    root = Path(root)
    table = require(root / "annotations.csv", "MHIST")
    lookup = {c: i for i, c in enumerate(MHIST_CLASSES)}
    keys, labels = [], []
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        for col in ("Image Name", "Majority Vote Label", "Partition"):
            if col not in (reader.fieldnames or []):
                raise ValueError(f"{table}: missing column {col!r}; found {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            if split is not None and row["Partition"].strip() != split:
                continue
            label = row["Majority Vote Label"].strip()
            if label not in lookup:
                raise ValueError(f"{table} line {n}: label {label!r} is not one of {MHIST_CLASSES}")
            keys.append(row["Image Name"].strip())
            labels.append(lookup[label])
    return PublishedDataset(keys, [root / "images" / k for k in keys], labels, MHIST_CLASSES)
