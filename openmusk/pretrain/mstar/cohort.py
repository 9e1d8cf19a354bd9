"""A tri-modal pretraining cohort, read by :mod:`openmusk.mil.cohort` into mil's patient records.

Table (CSV): ``case_id``, ``features`` (HDF5 file(s) of ``openmusk slide extract`` in the TRIDENT
layout, several joined by ``;``, paths relative to the table's folder or absolute; empty = no
slide), ``report`` (text; empty or absent = no report), optional ``split`` (train / val / test). RNA table
(CSV): ``case_id`` then one column per gene (raw counts or TPM); a case absent from it has no RNA.
Unreadable feature files are skipped and listed as problems; the patient keeps its other modalities.
"""
from __future__ import annotations

import os

import numpy as np

from openmusk.mil.cohort import PatientRecord, attach_features, read_cohort

__all__ = ["read_pretrain_cohort", "read_rna_table"]


def read_pretrain_cohort(table: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
                         ) -> tuple[list[PatientRecord], int, list[str]]:
    """(patients, feature dim, problems); patients without a ``split`` are split at random."""
    records, _ = read_cohort(table, task=None, patient_column="case_id", slide_column="features",
                             report_column="report", split_column="split", slide_paths=True)
    records, skipped, dim = attach_features(records, None, keep_without_slides=True)
    problems = [f"{table}: {s['patient_id']}: {s['file']}: {s['reason']}" for s in skipped]
    rng = np.random.default_rng(seed)
    for rec in records:
        rec.report = rec.report.strip()
        if not rec.split:
            rec.split = "val" if rng.random() < val_fraction else "train"
    return records, dim, problems


def read_rna_table(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(case ids, gene names, counts (cases, genes)) from a CSV whose first column is ``case_id``."""
    import pandas as pd

    df = pd.read_csv(path)
    if df.columns[0] != "case_id":
        raise ValueError(f"{path}: first column must be 'case_id', found {df.columns[0]!r}")
    if df["case_id"].duplicated().any():
        raise ValueError(f"{path}: duplicated case_id {df['case_id'][df['case_id'].duplicated()].iloc[0]!r}")
    values = df.iloc[:, 1:].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{path}: row {r + 2} (case {df['case_id'].iloc[r]!r}), gene {values.columns[c]!r} "
                         "is not a number")
    return df["case_id"].astype(str).tolist(), [str(c) for c in values.columns], values.to_numpy(np.float64)
