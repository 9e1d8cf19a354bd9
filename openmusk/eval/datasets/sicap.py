"""SICAPv2 (Silva-Rodriguez et al.) as published: ``images/*.jpg`` and the partition spreadsheets.

Checked against the owners' release (``partition/Test/Train.xlsx`` and ``Test.xlsx`` with
``image_name, NC, G3, G4, G5, G4C`` one-hot columns). Rule: the label is the one of NC, G3, G4, G5
that is 1; ``G4C`` (cribriform) rows also carry G4 = 1 and count as G4; a row with no or several
of NC/G3/G4/G5 set is refused, naming the row.
"""
from __future__ import annotations

from pathlib import Path

from openmusk.eval.datasets.base import PublishedDataset, require

__all__ = ["read_sicapv2", "SICAP_COLUMNS"]

SICAP_COLUMNS = ["NC", "G3", "G4", "G5"]


def read_sicapv2(root: str | Path, split: str | None = None, partition: str = "Test") -> PublishedDataset:
    """Rows of ``partition/<partition>/<Split>.xlsx`` (split ``Train``/``Test``; None: both)."""
    import pandas as pd

    root = Path(root)
    keys, labels = [], []
    for part in ([split] if split is not None else ["Train", "Test"]):
        sheet = require(root / "partition" / partition / f"{part}.xlsx", "SICAPv2 partition")
        df = pd.read_excel(sheet)
        missing = [c for c in ["image_name", *SICAP_COLUMNS] if c not in df.columns]
        if missing:
            raise ValueError(f"{sheet}: missing column(s) {missing}; found {list(df.columns)}")
        onehot = df[SICAP_COLUMNS].to_numpy()
        for r in range(len(df)):
            hot = [j for j in range(4) if onehot[r, j] == 1]
            if len(hot) != 1:
                raise ValueError(f"{sheet} row {r + 2} ({df['image_name'].iloc[r]}): needs exactly one of "
                                 f"{SICAP_COLUMNS} set, got {onehot[r].tolist()}")
            keys.append(str(df["image_name"].iloc[r]))
            labels.append(hot[0])
    return PublishedDataset(keys, [root / "images" / k for k in keys], labels, SICAP_COLUMNS)
