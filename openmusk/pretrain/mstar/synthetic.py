"""Synthetic cohorts with planted structure, written in the real on-disk formats.

* ``make_trimodal_cohort``: patients with three clinical attributes (grade, subtype, lymphocytic
  infiltrate) that show up in the patch features (a fraction of patches carry attribute
  prototypes, over patient-level nuisance shifts), in a pathology-report sentence whose wording
  names them, and in RNA-seq counts (attribute-specific gene programmes). Writes one TRIDENT-layout HDF5 file per slide
  (``features`` (N, D), ``coords`` (N, 2)), ``cohort.csv`` and ``rna.csv``; some patients lack
  a report or RNA.
* ``make_genomic_survival_cohort``: survival times driven by the mean expression of one pathway.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ATTRIBUTES", "TriModalCohort", "make_trimodal_cohort", "make_genomic_survival_cohort",
           "write_h5_features"]

ATTRIBUTES: dict[str, list[str]] = {
    "grade": ["well differentiated (low grade)", "moderately differentiated", "poorly differentiated (high grade)"],
    "subtype": ["adenocarcinoma", "squamous cell carcinoma", "mucinous carcinoma"],
    "lymph": ["no lymphocytic infiltrate", "a moderate lymphocytic infiltrate", "a dense lymphocytic infiltrate"],
}
_TEMPLATES = [
    "Sections show {subtype}, {grade}, with {lymph}.",
    "Microscopy: {grade} {subtype}. The stroma shows {lymph}.",
    "Diagnosis: {subtype}. Grade: {grade}. There is {lymph}.",
]


@dataclass
class TriModalCohort:
    """Where ``make_trimodal_cohort`` wrote the cohort and the planted attribute levels per patient."""

    table: Path
    rna_table: Path
    features_dir: Path
    case_ids: list[str]
    levels: np.ndarray  # (patients, 3) attribute level per patient, columns in ATTRIBUTES order


def write_h5_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray,
                      patch_size: int = 256, level: int = 0) -> None:
    """Write a slide's features file (:func:`openmusk.data.features_h5.write_features`) with the
    coords attributes a tiler gives: ``patch_size``, ``patch_size_level0``, ``level``."""
    from openmusk.data.features_h5 import write_features

    write_features(path, features, coords,
                   coords_attrs={"patch_size": patch_size, "patch_size_level0": patch_size, "level": level})


def _grid_coords(n: int, patch_size: int) -> np.ndarray:
    """Row-major grid positions for ``n`` patches."""
    side = int(np.ceil(np.sqrt(n)))
    idx = np.arange(n)
    return np.stack([(idx % side) * patch_size, (idx // side) * patch_size], axis=1)


def make_trimodal_cohort(out_dir: str | os.PathLike, n_patients: int = 120, n_patches: int = 64,
                         dim: int = 32, n_genes: int = 300, informative: float = 0.5,
                         signal: float = 2.5, nuisance: float = 1.0, missing_report: float = 0.15,
                         missing_rna: float = 0.2, seed: int = 0) -> TriModalCohort:
    """Write a tri-modal cohort whose three modalities share the planted attributes (see module doc).

    ``nuisance`` scales patient-level shifts along 4 random directions that no other modality
    shares (stain, scanner, tissue mix): large slide-level variance a model must learn to ignore.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    feat_dir = out / "features"
    feat_dir.mkdir(parents=True, exist_ok=True)
    n_attr, n_lev = len(ATTRIBUTES), 3
    levels = rng.integers(0, n_lev, size=(n_patients, n_attr))
    protos = rng.normal(size=(n_attr, n_lev, dim)) * signal / 2
    nuisance_dirs = rng.normal(size=(4, dim))
    gene_base = rng.normal(3.0, 1.0, size=n_genes)
    programmes = np.zeros((n_attr, n_lev, n_genes))
    for a in range(n_attr):
        for lev in range(n_lev):
            genes = rng.choice(n_genes, size=n_genes // 10, replace=False)
            programmes[a, lev, genes] = rng.normal(0, 1.0, size=len(genes))
    names = list(ATTRIBUTES)
    rows, rna_rows = [], []
    case_ids = [f"case{i:04d}" for i in range(n_patients)]
    for i, case in enumerate(case_ids):
        x = rng.normal(size=(n_patches, dim)) + nuisance * rng.normal(size=4) @ nuisance_dirs
        carriers = rng.random(n_patches) < informative
        which = rng.integers(0, n_attr, size=n_patches)
        for a in range(n_attr):
            sel = carriers & (which == a)
            x[sel] += protos[a, levels[i, a]]
        path = feat_dir / f"{case}.h5"
        write_h5_features(path, x, _grid_coords(n_patches, 256))
        drop = rng.random()
        has_report = not (drop < missing_report)
        has_rna = not (missing_report <= drop < missing_report + missing_rna)
        words = {names[a]: ATTRIBUTES[names[a]][levels[i, a]] for a in range(n_attr)}
        report = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(**words) if has_report else ""
        rows.append({"case_id": case, "features": f"features/{case}.h5", "report": report,
                     **{names[a]: int(levels[i, a]) for a in range(n_attr)}})
        if has_rna:
            log_mean = gene_base + sum(programmes[a, levels[i, a]] for a in range(n_attr))
            counts = rng.poisson(np.exp(log_mean + rng.normal(0, 0.2, size=n_genes)))
            rna_rows.append([case, *counts.tolist()])
    table = out / "cohort.csv"
    rna_table = out / "rna.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    pd.DataFrame(rna_rows, columns=["case_id", *[f"GENE{g:04d}" for g in range(n_genes)]]).to_csv(rna_table, index=False)
    return TriModalCohort(table, rna_table, feat_dir, case_ids, levels)


def make_genomic_survival_cohort(out_dir: str | os.PathLike, n_patients: int = 200, n_patches: int = 32,
                                 dim: int = 16, n_genes: int = 60, n_groups: int = 6, effect: float = 1.0,
                                 censoring: float = 0.3, seed: int = 0) -> dict:
    """Survival cohort: log-hazard = ``effect`` x (standardised mean expression of pathway 0) + a weaker slide signal.

    Writes one HDF5 feature file per patient under ``out_dir/features``; returns ``records``
    (``openmusk.mil`` patient records), ``omics`` (patient id -> log-expression), ``groups``
    (pathway -> gene column indices) and the true ``risk``.
    """
    from openmusk.mil.cohort import PatientRecord

    rng = np.random.default_rng(seed)
    feat_dir = Path(out_dir) / "features"
    feat_dir.mkdir(parents=True, exist_ok=True)
    omics = rng.normal(size=(n_patients, n_genes))
    groups = {f"pathway{k}": part.tolist() for k, part in enumerate(np.array_split(np.arange(n_genes), n_groups))}
    genomic = omics[:, groups["pathway0"]].mean(1) * np.sqrt(len(groups["pathway0"]))
    proto = rng.normal(size=dim)
    slide_score = rng.normal(size=n_patients)
    risk = effect * genomic + 0.3 * slide_score
    times = rng.exponential(1.0 / np.exp(risk)) * 365
    cens = rng.exponential(np.quantile(times, 1 - censoring) * 2, size=n_patients)
    events = (times <= cens).astype(int)
    observed = np.minimum(times, cens)
    records = []
    for i in range(n_patients):
        pid = f"pt{i:04d}"
        x = rng.normal(size=(n_patches, dim))
        x[: n_patches // 4] += slide_score[i] * proto / 2
        path = feat_dir / f"{pid}.h5"
        write_h5_features(path, x, _grid_coords(n_patches, 256))
        records.append(PatientRecord(pid, [pid], time=float(observed[i]), event=int(events[i]),
                                     feature_files=[str(path)]))
    return {"records": records, "omics": {r.patient_id: omics[i] for i, r in enumerate(records)},
            "groups": groups, "risk": risk}
