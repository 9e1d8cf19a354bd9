"""UniToPatho (Barbano et al.) as published: ``800/<class>/<image_id>`` with ``800/train.csv`` and
``800/test.csv`` (``image_id, top_label_name, top_label, ...``).

Checked against the owners' loader (EIDOSLAB/UNITOPATHO ``unitopatho.py``: ``path/<top_label_name>/
<image_id>``) and the MUSK authors' ``UnitopathoDataset`` (class order HP, NORM, TA.HG, TA.LG,
TVA.HG, TVA.LG, label from the class folder). Split None gives train then test (the authors'
image retrieval uses every image).
"""
from __future__ import annotations

import csv
from pathlib import Path

from openmusk.eval.datasets.base import PublishedDataset, require

__all__ = ["read_unitopatho", "UNITOPATHO_CODES"]

UNITOPATHO_CODES = ["HP", "NORM", "TA.HG", "TA.LG", "TVA.HG", "TVA.LG"]


def read_unitopatho(root: str | Path, split: str | None = None, resolution: str = "800") -> PublishedDataset:
    """The rows of ``<resolution>/<split>.csv`` (None: train then test)."""
    base = Path(root) / str(resolution)
    lookup = {c: i for i, c in enumerate(UNITOPATHO_CODES)}
    keys, labels = [], []
    for part in ([split] if split is not None else ["train", "test"]):
        table = require(base / f"{part}.csv", "UniToPatho")
        with table.open(newline="") as f:
            reader = csv.DictReader(f)
            for col in ("image_id", "top_label_name"):
                if col not in (reader.fieldnames or []):
                    raise ValueError(f"{table}: missing column {col!r}; found {reader.fieldnames}")
            for n, row in enumerate(reader, start=2):
                name = row["top_label_name"]
                if name not in lookup:
                    raise ValueError(f"{table} line {n}: top_label_name {name!r} is not one of "
                                     f"{UNITOPATHO_CODES}")
                keys.append(f"{name}/{row['image_id']}")
                labels.append(lookup[name])
    return PublishedDataset(keys, [base / k for k in keys], labels, UNITOPATHO_CODES)
