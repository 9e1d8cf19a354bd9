"""Cohort tables and bags: patients with their slides' HDF5 features, outcomes and reports.

A cohort CSV has one row per slide (several rows per patient) or one row per patient with slide
ids joined by ';'. Each slide's features live in ``<features_dir>/<slide_id>.h5`` in the
TRIDENT/CLAM layout that ``openmusk slide extract`` writes (``features`` (N, D) float,
``coords`` (N, 2) int64). A patient's bag is the concatenation of all their slides' tiles.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["PatientRecord", "read_cohort", "attach_features", "BagDataset", "collate_bags"]


@dataclass
class PatientRecord:
    """One patient: slide feature files, outcome, report text and clinical covariates."""

    patient_id: str
    slides: list[str]
    label: int = -1
    time: float = float("nan")
    event: int = -1
    report: str = ""
    covariates: dict[str, Any] = field(default_factory=dict)
    feature_files: list[str] = field(default_factory=list)


def _require(df, columns: Sequence[str], path: str) -> None:
    """Raise naming the CSV and the missing columns."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")


def read_cohort(path: str | os.PathLike, task: str = "classification", patient_column: str = "patient_id",
                slide_column: str = "slide_id", label_column: str = "label", time_column: str = "time",
                event_column: str = "event", report_column: str | None = "report",
                covariates: Sequence[str] = (), need_report: bool = False
                ) -> tuple[list[PatientRecord], list[str]]:
    """Read a cohort CSV into patient records and the sorted class names (classification).

    Rows of one patient must agree on outcome and report; an inconsistent or invalid value raises
    an error naming the CSV row (1-based, header = row 1).
    """
    import pandas as pd

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cohort table not found: {path}")
    df = pd.read_csv(path, dtype={patient_column: str, slide_column: str})
    outcome = [label_column] if task == "classification" else [time_column, event_column]
    _require(df, [patient_column, slide_column, *outcome, *covariates], path)
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
        slides = [s.strip() for s in str(row[slide_column]).split(";") if s.strip()]
        if not slides or str(row[slide_column]) == "nan":
            raise ValueError(f"{where}: empty {slide_column!r}")
        rec = PatientRecord(pid, slides)
        if task == "classification":
            rec.label = classes.index(str(row[label_column]))
        else:
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
            if (prev.label, prev.event, prev.report) != (rec.label, rec.event, rec.report) or \
                    not (prev.time == rec.time or (np.isnan(prev.time) and np.isnan(rec.time))):
                raise ValueError(f"{where}: patient {pid!r} has a different outcome or report than "
                                 "on an earlier row")
            prev.slides.extend(s for s in slides if s not in prev.slides)
        else:
            records[pid] = rec
    if need_report:
        empty = [r.patient_id for r in records.values() if not r.report.strip()]
        if empty:
            raise ValueError(f"{path}: empty {report_column!r} for patients {empty[:10]}")
    return list(records.values()), classes


def attach_features(records: list[PatientRecord], features_dir: str | os.PathLike
                    ) -> tuple[list[PatientRecord], list[dict], int]:
    """Find each slide's HDF5 file and check it; returns (kept records, skipped, feature dim).

    A slide whose file is missing or malformed is skipped and reported; a patient with no usable
    slide is dropped and reported. Feature dimensions must agree across the cohort.
    """
    import h5py

    features_dir = Path(features_dir)
    kept, skipped, dim = [], [], None
    for rec in records:
        rec.feature_files = []
        for slide in rec.slides:
            path = features_dir / f"{slide}.h5"
            reason = None
            if not path.is_file():
                reason = "feature file not found"
            else:
                try:
                    with h5py.File(path, "r") as f:
                        if "features" not in f or "coords" not in f:
                            reason = f"needs 'features' and 'coords' datasets, found {list(f.keys())}"
                        elif f["features"].ndim != 2 or f["features"].shape[0] == 0:
                            reason = f"'features' must be (N>0, D), got {f['features'].shape}"
                        elif f["coords"].shape != (f["features"].shape[0], 2):
                            reason = (f"'coords' shape {f['coords'].shape} does not match "
                                      f"'features' {f['features'].shape}")
                        else:
                            d = int(f["features"].shape[1])
                            if dim is None:
                                dim = d
                            elif d != dim:
                                reason = f"feature dim {d} differs from the cohort's {dim}"
                except OSError as e:
                    reason = f"unreadable HDF5 ({e})"
            if reason:
                skipped.append({"patient_id": rec.patient_id, "slide_id": slide, "file": str(path),
                                "reason": reason})
            else:
                rec.feature_files.append(str(path))
        if rec.feature_files:
            kept.append(rec)
        else:
            skipped.append({"patient_id": rec.patient_id, "slide_id": "", "file": "",
                            "reason": "patient dropped: no usable slide"})
    if dim is None:
        raise ValueError(f"no usable feature file in {features_dir} for any of {len(records)} patients")
    return kept, skipped, dim


class BagDataset(Dataset):
    """Patients as bag dicts: ``features`` (N, D) of all their slides, ``coords``, ``slide_index``,
    outcome fields, and the ``report`` embedding when given.

    ``reports`` (P, E) aligns with ``records``. ``max_instances`` draws a random subset of each bag
    (training); ``bins`` gives the discrete-time interval of each patient (survival NLL).
    """

    def __init__(self, records: Sequence[PatientRecord], reports: np.ndarray | None = None,
                 bins: np.ndarray | None = None, max_instances: int | None = None,
                 load_features: bool = True, seed: int = 0):
        self.records = list(records)
        self.reports = None if reports is None else np.asarray(reports, np.float32)
        self.bins = bins
        self.max_instances = max_instances
        self.load_features = load_features
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.records)

    def _bag(self, rec: PatientRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Concatenated features, coords and slide index of a patient's slides."""
        from openmusk.slide.extract import read_features

        feats, coords, index = [], [], []
        for k, path in enumerate(rec.feature_files):
            f, c, _ = read_features(path)
            feats.append(f.astype(np.float32, copy=False))
            coords.append(c.astype(np.int64, copy=False))
            index.append(np.full(len(f), k, np.int64))
        return np.concatenate(feats), np.concatenate(coords), np.concatenate(index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        item: dict[str, Any] = {"id": rec.patient_id, "label": rec.label, "time": rec.time,
                                "event": rec.event, "bin": -1 if self.bins is None else int(self.bins[i])}
        if self.load_features:
            f, c, s = self._bag(rec)
            if self.max_instances and len(f) > self.max_instances:
                keep = np.sort(self.rng.choice(len(f), self.max_instances, replace=False))
                f, c, s = f[keep], c[keep], s[keep]
            item.update(features=torch.from_numpy(f), coords=torch.from_numpy(c),
                        slide_index=torch.from_numpy(s))
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
