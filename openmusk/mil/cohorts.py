"""Cohort builders: the public cohorts MUSK used, from the files their owners publish, to a mil cohort CSV.

Each returns a DataFrame with ``patient_id``, ``slide_id`` (several joined by ``;``), the outcome
(``time``/``event`` or ``label``), ``report`` where there is one, and the clinical columns kept for
subgroups, baselines and covariates; with ``out`` it is also written (atomically) as CSV.

* :func:`tcga_cohort` -- TCGA pan-cancer prognosis: the TCGA Pan-Cancer Clinical Data Resource
  (Liu et al., Cell 2018, ``TCGA-CDR-SupplementalTableS1.xlsx``, sheet ``TCGA-CDR``, or a CSV/TSV
  export; columns ``bcr_patient_barcode``, ``type``, ``DSS``, ``DSS.time`` in days, also OS/PFI/DFI),
  slide files named ``TCGA-XX-XXXX-01Z-00-DX1.<uuid>.svs`` (patient = first 12 characters), and the
  TCGA-Reports text release (Kefeli et al. 2024, ``TCGA_Reports.csv``: ``patient_filename``
  ``TCGA-XX-XXXX.<uuid>``, ``text``).
* :func:`visiomel_cohort` -- VisioMel melanoma relapse (DrivenData 2023): ``train_metadata.csv``
  (``filename``, ``age``, ``sex``, ``body_site``, ``melanoma_history``, ``breslow``, ``ulceration``,
  ...) and ``train_labels.csv`` (``filename``, ``relapse``); the clinical variables are rendered
  into report text with an editable template (:mod:`openmusk.mil.clinical_text`).
* :func:`bcnb_cohort` -- BCNB early breast cancer biomarkers: ``patient-clinical-data.xlsx``
  (``Patient ID``, ``Age(years)``, ``Tumour Size(cm)``, ``ER``, ``PR``, ``HER2``, ``ALN status``, ...)
  with one slide per patient, ``WSIs/<Patient ID>.jpg``; ``target`` picks ER, PR or HER2.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from openmusk.core.io import read_table

__all__ = ["tcga_cohort", "visiomel_cohort", "bcnb_cohort", "tcga_patient"]

TCGA_ENDPOINTS = ("DSS", "OS", "PFI", "DFI")
TCGA_CLINICAL = ("type", "age_at_initial_pathologic_diagnosis", "gender", "ajcc_pathologic_tumor_stage",
                 "histological_grade", "clinical_stage")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".h5", ".jpg", ".png")


def _require(df, columns: Iterable[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; found {list(df.columns)[:30]}")


def _write(df, out: str | os.PathLike | None) -> None:
    if out is not None:
        from openmusk.core.io import atomic_path

        with atomic_path(out, suffix=".csv.tmp") as tmp:
            df.to_csv(tmp, index=False)


def tcga_patient(name: str) -> str:
    """``TCGA-XX-XXXX`` from a slide file name, a sample barcode or a TCGA-Reports file name."""
    base = Path(str(name)).name
    if not base.upper().startswith("TCGA-") or len(base) < 12:
        raise ValueError(f"{name!r} does not start with a TCGA patient barcode (TCGA-XX-XXXX)")
    return base[:12].upper()


def _slide_names(slides: str | os.PathLike | Sequence[str]) -> list[str]:
    """Slide ids (file names without the suffix) from a folder (recursive), a list file or a list."""
    if isinstance(slides, (str, os.PathLike)) and Path(slides).is_dir():
        names = [p.name for p in Path(slides).rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES]
    elif isinstance(slides, (str, os.PathLike)):
        names = [line.strip() for line in Path(slides).read_text().splitlines() if line.strip()]
    else:
        names = [str(s) for s in slides]
    return sorted({n[: -len(Path(n).suffix)] if Path(n).suffix.lower() in SLIDE_SUFFIXES else n for n in names})


def tcga_cohort(clinical: str | os.PathLike, slides: str | os.PathLike | Sequence[str],
                reports: str | os.PathLike | None = None, endpoint: str = "DSS",
                projects: Sequence[str] = (), diagnostic_only: bool = True,
                out: str | os.PathLike | None = None):
    """TCGA survival cohort (disease-specific survival by default) from TCGA-CDR, slides and reports.

    Patients without the endpoint (``#N/A`` / empty), without a slide, or (with ``reports``)
    without a report are left out; ``projects`` (e.g. ``["BRCA", "LUAD"]``) keeps those TCGA
    projects. ``diagnostic_only`` keeps FFPE diagnostic slides (``-DX`` in the name).
    """
    import numpy as np
    import pandas as pd

    endpoint = endpoint.upper()
    if endpoint not in TCGA_ENDPOINTS:
        raise ValueError(f"endpoint {endpoint!r}: use one of {TCGA_ENDPOINTS}")
    path = Path(clinical)
    df = read_table(path, sheet="TCGA-CDR" if path.suffix.lower() in (".xlsx", ".xls") else None)
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed")]]
    _require(df, ["bcr_patient_barcode", "type", endpoint, f"{endpoint}.time"], str(path))
    event = pd.to_numeric(df[endpoint], errors="coerce")
    time = pd.to_numeric(df[f"{endpoint}.time"], errors="coerce")
    keep = event.isin([0, 1]) & time.notna() & (time >= 0)
    if projects:
        keep &= df["type"].astype(str).str.upper().isin([p.upper() for p in projects])
    base = pd.DataFrame({"patient_id": df["bcr_patient_barcode"].astype(str).str.upper(),
                         "time": time, "event": event})
    for c in TCGA_CLINICAL:
        if c in df.columns:
            base[c if c != "type" else "project"] = df[c]
    base = base[keep.to_numpy()].drop_duplicates("patient_id")
    base["event"] = base["event"].astype(int)
    by_patient: dict[str, list[str]] = {}
    for s in _slide_names(slides):
        if diagnostic_only and "-DX" not in s.upper():
            continue
        by_patient.setdefault(tcga_patient(s), []).append(s)
    base["slide_id"] = base["patient_id"].map(lambda p: ";".join(by_patient.get(p, [])))
    base = base[base["slide_id"] != ""]
    if reports is not None:
        rep = read_table(reports)
        _require(rep, ["patient_filename", "text"], str(reports))
        texts = {}
        for name, text in zip(rep["patient_filename"], rep["text"]):
            if isinstance(text, str) and text.strip():
                texts.setdefault(tcga_patient(name), text.strip())
        base["report"] = base["patient_id"].map(texts)
        base = base[base["report"].notna()]
    if base.empty:
        raise ValueError(f"TCGA cohort is empty: no patient of {path} has the {endpoint} endpoint, a "
                         f"{'diagnostic ' if diagnostic_only else ''}slide{' and a report' if reports else ''}")
    cols = ["patient_id", "slide_id", "time", "event", *(["report"] if reports is not None else []),
            *[c for c in base.columns if c not in ("patient_id", "slide_id", "time", "event", "report")]]
    base = base[cols].reset_index(drop=True)
    base["time"] = base["time"].astype(np.float64)
    _write(base, out)
    return base


def visiomel_cohort(metadata: str | os.PathLike, labels: str | os.PathLike, template: str = "clinical_melanoma",
                    out: str | os.PathLike | None = None):
    """VisioMel relapse cohort: one slide per patient, label ``relapse``, report rendered from the clinical variables."""
    import pandas as pd

    from openmusk.mil.clinical_text import render_reports

    meta, lab = read_table(metadata, dtype={"filename": str}), read_table(labels, dtype={"filename": str})
    _require(meta, ["filename"], str(metadata))
    _require(lab, ["filename", "relapse"], str(labels))
    df = meta.merge(lab[["filename", "relapse"]], on="filename", how="inner", validate="one_to_one")
    if df.empty:
        raise ValueError(f"no filename of {labels} appears in {metadata}")
    stem = df["filename"].map(lambda f: f[: -len(Path(f).suffix)] if Path(f).suffix else f)
    df.insert(0, "patient_id", stem)
    df.insert(1, "slide_id", stem)
    df.insert(2, "label", pd.to_numeric(df.pop("relapse"), errors="raise").astype(int))
    texts = render_reports(df, template, "patient_id", str(metadata))
    df.insert(3, "report", df["patient_id"].map(texts))
    _write(df, out)
    return df


def bcnb_cohort(clinical: str | os.PathLike, target: str = "HER2", out: str | os.PathLike | None = None):
    """BCNB biomarker cohort: label = the ``target`` status (ER, PR or HER2: Positive / Negative)."""
    target = target.upper()
    if target not in ("ER", "PR", "HER2"):
        raise ValueError(f"BCNB target {target!r}: use ER, PR or HER2")
    df = read_table(clinical)
    _require(df, ["Patient ID", target], str(clinical))
    status = df[target].astype(str).str.strip().str.capitalize()
    bad = ~status.isin(["Positive", "Negative"])
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0]) + 2
        raise ValueError(f"{clinical}: row {row}: {target} is {df[target].iloc[row - 2]!r}, expected Positive/Negative")
    pid = df["Patient ID"].astype(int).astype(str)
    out_df = df.drop(columns=["Patient ID"]).copy()
    out_df.insert(0, "patient_id", pid)
    out_df.insert(1, "slide_id", pid)
    out_df.insert(2, "label", status.str.lower())
    _write(out_df, out)
    return out_df
