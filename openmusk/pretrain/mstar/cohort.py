"""A tri-modal pretraining cohort: one row per patient with slide feature files, a report and RNA-seq.

Table (CSV): ``case_id`` (unique), ``features`` (HDF5 file(s) of ``openmusk slide extract`` in the
TRIDENT layout, several joined by ``;``, paths relative to the table's folder or absolute; empty =
no slide), ``report`` (text; empty = no report), optional ``split`` (train / val / test).
RNA table (CSV): ``case_id`` then one column per gene (raw counts or TPM); a case absent from it
has no RNA. Unreadable feature files are skipped and listed in ``Cohort.problems``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

__all__ = ["PatientRecord", "Cohort", "load_cohort", "read_rna_table", "read_bag"]


@dataclass
class PatientRecord:
    """One patient's modalities; ``rna`` is filled after preprocessing."""

    case_id: str
    feature_paths: list[Path]
    n_patches: list[int]
    report: str
    split: str
    rna: np.ndarray | None = None


@dataclass
class Cohort:
    """Patients, the feature dimension of their slides and the problems met while reading them."""

    patients: list[PatientRecord]
    feature_dim: int
    problems: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[PatientRecord]:
        """Patients of one split."""
        return [p for p in self.patients if p.split == name]


def _h5_shape(path: Path) -> tuple[int, int]:
    """(N, D) of the ``features`` dataset, with the file named in any error."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise ValueError(f"{path}: no 'features' dataset (keys {list(f)})")
            shape = f["features"].shape
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"{path}: 'features' has shape {shape}, expected (N>0, D)")
    return int(shape[0]), int(shape[1])


def read_bag(paths: list[Path], max_patches: int | None = None,
             rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, D) of a patient's slides, a random subset of at most ``max_patches`` rows; also the row ids."""
    sizes = [_h5_shape(p)[0] for p in paths]
    total = sum(sizes)
    if max_patches and total > max_patches:
        rng = rng or np.random.default_rng()
        chosen = np.sort(rng.choice(total, size=max_patches, replace=False))
    else:
        chosen = np.arange(total)
    parts, start = [], 0
    for path, n in zip(paths, sizes):
        local = chosen[(chosen >= start) & (chosen < start + n)] - start
        if len(local):
            with h5py.File(path, "r") as f:
                ds = f["features"]
                parts.append(ds[:] if len(local) == n else ds[local])
        start += n
    return np.concatenate(parts).astype(np.float32), chosen


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


def load_cohort(table: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> Cohort:
    """Read the patient table and check every feature file; patients without a ``split`` are split at random."""
    import pandas as pd

    table = Path(table)
    df = pd.read_csv(table, dtype={"case_id": str}, keep_default_na=False)
    for col in ("case_id", "features", "report"):
        if col not in df.columns:
            raise ValueError(f"{table}: missing column {col!r} (columns: {list(df.columns)})")
    if df["case_id"].duplicated().any():
        raise ValueError(f"{table}: duplicated case_id {df['case_id'][df['case_id'].duplicated()].iloc[0]!r}")
    rng = np.random.default_rng(seed)
    patients, problems, dims = [], [], set()
    for row_no, row in enumerate(df.itertuples(index=False), start=2):
        paths, sizes = [], []
        for part in filter(None, (s.strip() for s in str(row.features).split(";"))):
            path = Path(part) if os.path.isabs(part) else table.parent / part
            try:
                n, d = _h5_shape(path)
            except ValueError as e:
                problems.append(f"{table}:{row_no} ({row.case_id}): {e}")
                continue
            paths.append(path)
            sizes.append(n)
            dims.add(d)
        split = str(getattr(row, "split", "") or "")
        if split not in ("", "train", "val", "test"):
            raise ValueError(f"{table}:{row_no}: split {split!r} is not train, val or test")
        if not split:
            split = "val" if rng.random() < val_fraction else "train"
        patients.append(PatientRecord(str(row.case_id), paths, sizes, str(row.report).strip(), split))
    if len(dims) > 1:
        raise ValueError(f"{table}: feature files have different dimensions {sorted(dims)}")
    if not dims:
        raise ValueError(f"{table}: no readable feature file")
    return Cohort(patients, dims.pop(), problems)
