"""Subgroups and clinical baselines on out-of-fold predictions, as the paper's immunotherapy figures.

* :func:`subgroup_analysis`: within each group of a cohort column (PD-L1 status, EGFR mutation,
  regimen, stage), the model's high- vs low-risk Kaplan-Meier curves, log-rank p and hazard ratio
  (survival) or the AUC with its CI (classification).
* :func:`clinical_baseline`: a model of clinical columns only (Cox regression or logistic
  regression on one-hot columns) trained on the SAME folds as the slide model (each fold's test
  patients predicted by a fit on the other folds' patients), its pooled metric, and the paired test
  of the slide model against it (DeLong for AUC, paired bootstrap for the c-index).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["cohort_table", "subgroup_analysis", "clinical_baseline", "fold_rank"]


def cohort_table(path: str | os.PathLike, patient_column: str, columns: Sequence[str]):
    """Columns of the cohort CSV, one row per patient (the first), indexed by patient id."""
    import pandas as pd

    df = pd.read_csv(path, dtype={patient_column: str})
    columns = list(dict.fromkeys(columns))  # a column may be both a subgroup and a baseline
    missing = [c for c in [patient_column, *columns] if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df.drop_duplicates(patient_column).set_index(patient_column)[list(columns)]


def fold_rank(oof, column: str = "risk") -> np.ndarray:
    """Within-fold percentile rank of a score (fold models' scales differ)."""
    return oof.groupby("fold")[column].rank(pct=True).to_numpy()


def subgroup_analysis(oof, table, column: str, kind: str, out_dir: str | os.PathLike | None = None,
                      n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """One row per group of ``table[column]``: n, and HR / log-rank (survival) or AUC (classification).

    Survival uses the run's per-fold median risk groups (``oof['risk_group']``); with ``out_dir``
    a Kaplan-Meier plot with numbers at risk is written per group (``km_<column>_<group>.png``).
    """
    from openmusk.mil.metrics import auc_ci, km_risk_groups
    from openmusk.mil.plots import plot_km_groups

    values = table.reindex(oof["id"].astype(str))[column].to_numpy()
    rows = []
    for group in sorted({str(v) for v in values if v == v}):
        m = np.array([str(v) == group for v in values])
        row: dict = {"column": column, "group": group, "n": int(m.sum())}
        sub = oof[m]
        try:
            if kind == "survival":
                t, e = sub["time"].to_numpy(float), sub["event"].to_numpy(int)
                high = (sub["risk_group"] == "high").to_numpy()
                km = km_risk_groups(t, e, high.astype(float), threshold=0.5)
                row.update(events=int(e.sum()), n_high=km["n_high"], n_low=km["n_low"],
                           hazard_ratio=km["hazard_ratio"], hr_low=km["hr_low"], hr_high=km["hr_high"],
                           logrank_p=km["logrank_p"])
                if out_dir is not None:
                    safe = "".join(ch if ch.isalnum() else "_" for ch in f"{column}_{group}")
                    plot_km_groups(t, e, np.where(high, "high risk", "low risk"),
                                   Path(out_dir) / f"km_{safe}.png", title=f"{column} = {group}")
            else:
                prob_cols = [c for c in sub.columns if c.startswith("prob_")]
                y = sub["label"].to_numpy(int)
                est = auc_ci(y, sub[prob_cols].to_numpy(float), n_resamples=n_resamples, seed=seed)
                row.update(auc=est.value, auc_low=est.low, auc_high=est.high)
        except Exception as err:  # a small group without events or classes is reported, not fatal
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
    return rows


def _design(table, columns: Sequence[str]):
    """One-hot categorical and numeric columns; missing categories become their own level."""
    import pandas as pd

    parts = []
    for c in columns:
        col = table[c]
        if pd.api.types.is_numeric_dtype(col):
            parts.append(col.astype(float).fillna(col.median()).rename(c).to_frame())
        else:
            parts.append(pd.get_dummies(col.astype(str).fillna("missing"), prefix=c, drop_first=True,
                                        dtype=float))
    return pd.concat(parts, axis=1)


def clinical_baseline(oof, table, columns: Sequence[str], kind: str, n_resamples: int = 1000,
                      seed: int = 0) -> dict:
    """Clinical-only model on the run's folds; its pooled metric and the paired test against the run."""
    from openmusk.core.stats import delong_test, paired_bootstrap_diff
    from openmusk.mil.metrics import harrell_c, roc_auc

    ids = oof["id"].astype(str).to_numpy()
    X = _design(table.reindex(ids), columns).to_numpy(float)
    folds = oof["fold"].to_numpy()
    score = np.zeros(len(oof))
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        if kind == "survival":
            import pandas as pd
            from lifelines import CoxPHFitter

            names = [f"x{i}" for i in range(X.shape[1])]
            df = pd.DataFrame(X[train], columns=names)
            df["T"], df["E"] = oof["time"].to_numpy(float)[train], oof["event"].to_numpy(int)[train]
            cph = CoxPHFitter(penalizer=0.01).fit(df, "T", "E")
            score[test] = cph.predict_log_partial_hazard(pd.DataFrame(X[test], columns=names)).to_numpy()
        else:
            from sklearn.linear_model import LogisticRegression

            y = oof["label"].to_numpy(int)
            clf = LogisticRegression(max_iter=1000).fit(X[train], y[train])
            score[test] = clf.predict_proba(X[test])[:, -1]
    out: dict = {"columns": list(columns)}
    if kind == "survival":
        import pandas as pd

        t, e = oof["time"].to_numpy(float), oof["event"].to_numpy(int)
        base_rank = fold_rank(pd.DataFrame({"fold": folds, "risk": score}))
        model_rank = fold_rank(oof)
        out["c_index"] = harrell_c(t, e, base_rank)
        out["model_c_index"] = harrell_c(t, e, model_rank)
        out["model_vs_baseline"] = paired_bootstrap_diff(harrell_c, (t, e, model_rank), (t, e, base_rank),
                                                         n_resamples=n_resamples, seed=seed)
    else:
        y = oof["label"].to_numpy(int)
        prob_cols = [c for c in oof.columns if c.startswith("prob_")]
        model = oof[prob_cols[-1]].to_numpy(float)
        out["auc"] = roc_auc(y, score)
        out["model_auc"] = roc_auc(y, model)
        if len(prob_cols) == 2:
            out["model_vs_baseline"] = delong_test(y, model, score)
    return out
