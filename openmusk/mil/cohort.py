"""Cohort tables and bags: patients with their slides' HDF5 features, outcomes, reports and RNA.

A cohort CSV has one row per slide (several rows per patient) or one row per patient with slide
ids joined by ';'. Each slide's features live in ``<features_dir>/<slide_id>.h5`` in the
TRIDENT/CLAM layout that ``openmusk slide extract`` writes (``features`` (N, D) float,
``coords`` (N, 2) int64), read through :mod:`openmusk.data.features_h5`; or the slide column
holds the HDF5 paths themselves (``slide_paths=True``, relative to the CSV's folder), as mSTAR's
pretraining tables do. A patient's bag is the concatenation of all their slides' tiles.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from openmusk.data.features_h5 import (FeaturesFileError, features_shape, read_coords_file, read_feature_rows,
                                       read_features)

__all__ = ["PatientRecord", "read_cohort", "attach_features", "read_bag", "BagDataset", "collate_bags",
           "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass
class PatientRecord:
    """One patient: slide feature files, outcome, report text, clinical covariates and, for
    pretraining, a fixed split and a preprocessed RNA-seq profile."""

    patient_id: str
    slides: list[str]
    label: int = -1
    time: float = float("nan")
    event: int = -1
    report: str = ""
    covariates: dict[str, Any] = field(default_factory=dict)
    feature_files: list[str] = field(default_factory=list)
    split: str = ""                     # train | val | test, "" = not fixed by the table
    rna: np.ndarray | None = None


def _require(df, columns: Sequence[str], path: str) -> None:
    """Raise naming the CSV and the missing columns."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")


def read_cohort(path: str | os.PathLike, task: str | None = "classification", patient_column: str = "patient_id",
                slide_column: str = "slide_id", label_column: str = "label", time_column: str = "time",
                event_column: str = "event", report_column: str | None = "report",
                covariates: Sequence[str] = (), need_report: bool = False, split_column: str | None = None,
                slide_paths: bool = False) -> tuple[list[PatientRecord], list[str]]:
    """Read a cohort CSV into patient records and the sorted class names (classification).

    ``task`` None reads no outcome (a pretraining cohort); then a patient may have no slide (an
    empty slide cell). ``slide_paths``: the slide column holds HDF5 paths (absolute or relative
    to the CSV's folder) instead of ids. ``split_column`` (optional column) fixes each patient's
    train / val / test split. Rows of one patient must agree on outcome, report and split; an
    inconsistent or invalid value raises an error naming the CSV row (1-based, header = row 1).
    """
    import pandas as pd

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cohort table not found: {path}")
    from openmusk.core.io import read_table

    df = read_table(path, dtype={patient_column: str, slide_column: str})
    outcome = {"classification": [label_column], "survival": [time_column, event_column], None: []}[task]
    _require(df, [patient_column, slide_column, *outcome, *covariates], path)
    has_split = bool(split_column) and split_column in df.columns
    base = Path(path).parent
    if need_report:
        _require(df, [report_column], path)
    classes: list[str] = []
    if task == "classification":
        if df[label_column].isna().any():
            row = int(np.flatnonzero(df[label_column].isna())[0]) + 2
            raise ValueError(f"{path}: row {row}: empty {label_column!r}")
        classes = sorted(df[label_column].astype(str).unique())
        if len(classes) < 2:
            raise ValueError(f"{path}: column {label_column!r} has a single class {classes}")
    records: dict[str, PatientRecord] = {}
    for i, row in enumerate(df.to_dict("records")):
        where = f"{path}: row {i + 2}"
        pid = str(row[patient_column])
        cell = "" if pd.isna(row[slide_column]) else str(row[slide_column])
        slides = [s.strip() for s in cell.split(";") if s.strip()]
        if not slides and task is not None:
            raise ValueError(f"{where}: empty {slide_column!r}")
        if slide_paths:
            slides = [s if os.path.isabs(s) else str(base / s) for s in slides]
        rec = PatientRecord(pid, slides)
        if has_split:
            rec.split = "" if pd.isna(row[split_column]) else str(row[split_column]).strip()
            if rec.split not in ("", *SPLITS):
                raise ValueError(f"{where}: {split_column} {rec.split!r} is not one of {SPLITS}")
        if task == "classification":
            rec.label = classes.index(str(row[label_column]))
        elif task == "survival":
            try:
                rec.time, rec.event = float(row[time_column]), int(row[event_column])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: time/event must be numbers ({e})") from e
            if not np.isfinite(rec.time) or rec.time < 0 or rec.event not in (0, 1):
                raise ValueError(f"{where}: need time >= 0 and event 0/1, got {row[time_column]!r}, "
                                 f"{row[event_column]!r}")
        if report_column and report_column in df.columns:
            rec.report = "" if pd.isna(row[report_column]) else str(row[report_column])
        rec.covariates = {c: row[c] for c in covariates}
        if pid in records:
            prev = records[pid]
            if (prev.label, prev.event, prev.report, prev.split) != (rec.label, rec.event, rec.report, rec.split) \
                    or not (prev.time == rec.time or (np.isnan(prev.time) and np.isnan(rec.time))):
                raise ValueError(f"{where}: patient {pid!r} has a different outcome, report or split than "
                                 "on an earlier row")
            prev.slides.extend(s for s in slides if s not in prev.slides)
        else:
            records[pid] = rec
    if need_report:
        empty = [r.patient_id for r in records.values() if not r.report.strip()]
        if empty:
            raise ValueError(f"{path}: empty {report_column!r} for patients {empty[:10]}")
    return list(records.values()), classes


def attach_features(records: list[PatientRecord], features_dir: str | os.PathLike | None,
                    keep_without_slides: bool = False) -> tuple[list[PatientRecord], list[dict], int]:
    """Find each slide's HDF5 file and check it; returns (kept records, skipped, feature dim).

    ``features_dir`` None: each slide entry is already the file's path. A slide whose file is
    missing or malformed is skipped and reported; a patient with no usable slide is dropped and
    reported (kept with no features when ``keep_without_slides``, e.g. for a report-and-RNA
    patient in pretraining). Feature dimensions must agree across the cohort.
    """
    kept, skipped, dim = [], [], None
    for rec in records:
        rec.feature_files = []
        for slide in rec.slides:
            path = Path(slide) if features_dir is None else Path(features_dir) / f"{slide}.h5"
            try:
                _, d = features_shape(path)
                reason = None if dim in (None, d) else f"feature dim {d} differs from the cohort's {dim}"
                dim = d if dim is None else dim
            except FeaturesFileError as e:
                reason = str(e).removeprefix(f"{path}: ")
            if reason:
                skipped.append({"patient_id": rec.patient_id, "slide_id": slide, "file": str(path),
                                "reason": reason})
            else:
                rec.feature_files.append(str(path))
        if rec.feature_files or keep_without_slides:
            kept.append(rec)
        else:
            skipped.append({"patient_id": rec.patient_id, "slide_id": "", "file": "",
                            "reason": "patient dropped: no usable slide"})
    if dim is None:
        where = features_dir if features_dir is not None else "the cohort's feature files"
        raise ValueError(f"no usable feature file in {where} for any of {len(records)} patients")
    return kept, skipped, dim


def read_bag(feature_files: Sequence[str | os.PathLike], max_instances: int | None = None,
             rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, D), coords (n, 2) and slide index (n,) of a patient's slides, concatenated.

    With ``max_instances`` a random subset of at most that many rows of the whole bag is drawn
    (sorted) and only those rows are read, so memory does not grow with slide size.
    """
    if not max_instances:
        parts = [read_features(p)[:2] for p in feature_files]
        sizes = [len(f) for f, _ in parts]
        return (np.concatenate([f for f, _ in parts]), np.concatenate([c for _, c in parts]),
                np.repeat(np.arange(len(sizes)), sizes))
    sizes = [features_shape(p)[0] for p in feature_files]
    total = sum(sizes)
    rng = rng or np.random.default_rng()
    chosen = np.sort(rng.choice(total, size=max_instances, replace=False)) if total > max_instances \
        else np.arange(total)
    feats, coords, index, start = [], [], [], 0
    for k, (path, n) in enumerate(zip(feature_files, sizes)):
        local = chosen[(chosen >= start) & (chosen < start + n)] - start
        if len(local):
            feats.append(read_feature_rows(path, local))
            coords.append(read_coords_file(path)[0][local])
            index.append(np.full(len(local), k, np.int64))
        start += n
    return np.concatenate(feats), np.concatenate(coords), np.concatenate(index)


class _BagCache:
    """Whole bags read once per process, keyed by their files' path, size and modification time;
    the oldest bags are dropped when the budget would be exceeded (arrays are shared: collate copies)."""

    def __init__(self) -> None:
        self.bags: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.nbytes = 0

    def get(self, files: Sequence[str | os.PathLike], budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The bag of ``files``, read on the first call (and again after a file changed)."""
        key = tuple((os.fspath(p), st.st_size, st.st_mtime_ns) for p, st in ((p, os.stat(p)) for p in files))
        if key in self.bags:
            return self.bags[key]
        bag = read_bag(files)
        size = sum(a.nbytes for a in bag)
        while self.bags and self.nbytes + size > budget:
            old = self.bags.pop(next(iter(self.bags)))
            self.nbytes -= sum(a.nbytes for a in old)
        if size <= budget:
            self.bags[key] = bag
            self.nbytes += size
        return bag


_BAGS = _BagCache()


class BagDataset(Dataset):
    """Patients as bag dicts: ``features`` (N, D) of all their slides, ``coords``, ``slide_index``,
    outcome fields, and the ``report`` embedding when given.

    ``reports`` (P, E) aligns with ``records``. ``max_instances`` draws a random subset of each bag
    (training); ``bins`` gives the discrete-time interval of each patient (survival NLL). Whole bags
    are kept in memory after their first read, process-wide and keyed by the files' size and
    modification time, while they fit in ``cache_bytes`` (every epoch and fold after the first then
    reads nothing from disk); 0 turns the cache off.
    """

    def __init__(self, records: Sequence[PatientRecord], reports: np.ndarray | None = None,
                 bins: np.ndarray | None = None, max_instances: int | None = None,
                 load_features: bool = True, seed: int | Sequence[int] = 0, cache_bytes: int = 1 << 30):
        self.records = list(records)
        self.reports = None if reports is None else np.asarray(reports, np.float32)
        self.bins = bins
        self.max_instances = max_instances
        self.load_features = load_features
        self.rng = np.random.default_rng(seed)
        self.cache_bytes = cache_bytes

    def _bag(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient ``i``'s bag: a fresh random subset, or the whole bag (from memory when cached)."""
        files = self.records[i].feature_files
        if self.max_instances:
            return read_bag(files, self.max_instances, self.rng)
        if not self.cache_bytes:
            return read_bag(files)
        return _BAGS.get(files, self.cache_bytes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        item: dict[str, Any] = {"id": rec.patient_id, "label": rec.label, "time": rec.time,
                                "event": rec.event, "bin": -1 if self.bins is None else int(self.bins[i])}
        if self.load_features:
            f, c, s = self._bag(i)
            item.update(features=torch.from_numpy(f), coords=torch.from_numpy(c), slide_index=torch.from_numpy(s))
        if self.reports is not None:
            item["report"] = torch.from_numpy(self.reports[i])
        return item


def collate_bags(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack bag dicts into a batch: features padded to (B, Nmax, D) with a (B, Nmax) ``mask``."""
    batch: dict[str, Any] = {"id": [s["id"] for s in samples]}
    for key, dtype in (("label", torch.long), ("time", torch.float32), ("event", torch.float32),
                       ("bin", torch.long)):
        batch[key] = torch.tensor([s[key] for s in samples], dtype=dtype)
    if "features" in samples[0]:
        n = max(len(s["features"]) for s in samples)
        d = samples[0]["features"].shape[1]
        feats = torch.zeros(len(samples), n, d)
        mask = torch.zeros(len(samples), n, dtype=torch.bool)
        coords = torch.zeros(len(samples), n, 2, dtype=torch.long)
        slide_index = torch.full((len(samples), n), -1, dtype=torch.long)
        for i, s in enumerate(samples):
            k = len(s["features"])
            feats[i, :k], mask[i, :k] = s["features"], True
            coords[i, :k], slide_index[i, :k] = s["coords"], s["slide_index"]
        batch.update(features=feats, mask=mask, coords=coords, slide_index=slide_index)
    if "report" in samples[0]:
        batch["report"] = torch.stack([s["report"] for s in samples])
    return batch
