"""SkinCancer (Kriegsmann et al., heiDATA) as published: ``data/tiles-v2.csv`` + ``data/tiles/``.

Checked against the MUSK authors' ``SkinDataset`` (benchmarks/clip_benchmark/datasets/
histopathology_datasets.py): columns ``file, class, malignicy, case, set``; ``set`` is ``Train``,
``Validation`` or ``Test``; ``file`` is relative to the root (it starts with ``data/``); the
tumour variant keeps ``malignicy == tumor`` and its 4 classes.
"""
from __future__ import annotations

import csv
from pathlib import Path

from openmusk.eval.datasets.base import PublishedDataset, require

__all__ = ["read_skin", "SKIN_CLASSES", "SKIN_TUMOR_CLASSES"]

SKIN_CLASSES = [
    "nontumor_skin_necrosis_necrosis", "nontumor_skin_muscle_skeletal",
    "nontumor_skin_sweatglands_sweatglands", "nontumor_skin_vessel_vessel",
    "nontumor_skin_elastosis_elastosis", "nontumor_skin_chondraltissue_chondraltissue",
    "nontumor_skin_hairfollicle_hairfollicle", "nontumor_skin_epidermis_epidermis",
    "nontumor_skin_nerves_nerves", "nontumor_skin_subcutis_subcutis", "nontumor_skin_dermis_dermis",
    "nontumor_skin_sebaceousglands_sebaceousglands", "tumor_skin_epithelial_sqcc",
    "tumor_skin_melanoma_melanoma", "tumor_skin_epithelial_bcc", "tumor_skin_naevus_naevus"]
SKIN_TUMOR_CLASSES = SKIN_CLASSES[12:]
_COLUMNS = ("file", "class", "malignicy", "set")


def read_skin(root: str | Path, split: str | None = None, tumor_only: bool = False) -> PublishedDataset:
    """Rows of ``data/tiles-v2.csv`` whose ``set`` is ``split`` (``Train``/``Validation``/``Test``;
    None: all), only ``malignicy == tumor`` when ``tumor_only``."""
    root = Path(root)
    table = require(root / "data" / "tiles-v2.csv", "SkinCancer")
    classes = SKIN_TUMOR_CLASSES if tumor_only else SKIN_CLASSES
    lookup = {c: i for i, c in enumerate(classes)}
    keys, labels = [], []
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{table}: missing column(s) {missing}; found {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            if split is not None and row["set"] != split:
                continue
            if tumor_only and row["malignicy"] != "tumor":
                continue
            if row["class"] not in lookup:
                raise ValueError(f"{table} line {n}: class {row['class']!r} is not one of {classes}")
            keys.append(row["file"])
            labels.append(lookup[row["class"]])
    if not keys:
        raise ValueError(f"{table}: no rows with set == {split!r}; the published values are "
                         "Train, Validation, Test")
    return PublishedDataset(keys, [root / k for k in keys], labels, classes)
