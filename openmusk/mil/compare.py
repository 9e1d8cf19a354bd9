"""Paired comparison of two finished `mil train` runs on their out-of-fold predictions.

Both runs must predict the same patients (e.g. two modalities, two aggregators, or two encoders'
features of the same cohort: MUSK vs another registry encoder). Patients present in only one run
are left out and counted. Tests, on the pooled out-of-fold predictions:

* classification (binary): DeLong's test for the difference of the two correlated AUCs
  (:func:`openmusk.core.stats.delong_test`); multi-class: paired bootstrap of the macro AUC;
* survival: paired bootstrap of the difference in Harrell's c-index
  (:func:`openmusk.core.stats.paired_bootstrap_diff`) on within-fold percentile ranks of the risk
  (fold models' risk scales differ).

Per fold of run A, the same test on that fold's patients gives the rows of a forest plot.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from openmusk.core.io import atomic_path, read_json, write_json

__all__ = ["compare_runs", "read_run"]


def read_run(run_dir: str | os.PathLike) -> tuple[object, dict]:
    """(out-of-fold predictions, task dict) of a finished run folder, with clear errors."""
    import pandas as pd

    run_dir = Path(run_dir)
    oof, task = run_dir / "oof_predictions.csv", run_dir / "fold_0" / "task.json"
    for f in (oof, task):
        if not f.is_file():
            raise FileNotFoundError(f"{run_dir}: no {f.relative_to(run_dir)}; is it a finished `mil train` run?")
    return pd.read_csv(oof, dtype={"id": str}), read_json(task)


def _scores(oof, kind: str) -> np.ndarray:
    """The score compared: P(last class) (binary), all class probabilities, or within-fold risk rank."""
    if kind == "survival":
        return oof.groupby("fold")["risk"].rank(pct=True).to_numpy()
    probs = oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy(float)
    return probs[:, -1] if probs.shape[1] == 2 else probs


def _paired_test(kind: str, a, b, sa: np.ndarray, sb: np.ndarray, n_resamples: int, seed: int) -> dict:
    """DeLong (binary AUC) or paired bootstrap (c-index, macro AUC) of run A minus run B."""
    from openmusk.core.stats import delong_test, paired_bootstrap_diff
    from openmusk.mil.metrics import harrell_c, roc_auc

    if kind == "survival":
        t, e = a["time"].to_numpy(float), a["event"].to_numpy(int)
        r = paired_bootstrap_diff(harrell_c, (t, e, sa), (t, e, sb), n_resamples=n_resamples, seed=seed)
        return {"metric": "c_index", "a": harrell_c(t, e, sa), "b": harrell_c(t, e, sb), **r}
    y = a["label"].to_numpy(int)
    if sa.ndim == 1:
        r = delong_test(y, sa, sb)
        low, high = r["diff"] - 1.959964 * r["se"], r["diff"] + 1.959964 * r["se"]
        return {"metric": "auc", "a": r["auc_a"], "b": r["auc_b"], **r, "low": low, "high": high}
    r = paired_bootstrap_diff(roc_auc, (y, sa), (y, sb), n_resamples=n_resamples, seed=seed)
    return {"metric": "auc", "a": roc_auc(y, sa), "b": roc_auc(y, sb), **r}


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 names: tuple[str, str] | None = None, n_resamples: int = 1000, seed: int = 0,
                 log: Callable[[str], None] = print) -> dict:
    """Compare run A with run B (A minus B); writes ``compare.json``, ``compare_folds.csv``,
    ``forest.png`` and ``report.html`` into ``out_dir`` (default ``<run_a>/compare_<run_b name>``)."""
    import pandas as pd

    from openmusk.mil.html_report import write_html_report
    from openmusk.mil.plots import plot_forest

    a, task_a = read_run(run_a)
    b, task_b = read_run(run_b)
    kind = task_a["kind"]
    if task_b["kind"] != kind:
        raise ValueError(f"cannot compare a {kind} run ({run_a}) with a {task_b['kind']} run ({run_b})")
    if kind == "classification" and task_a.get("classes") != task_b.get("classes"):
        raise ValueError(f"the runs have different classes: {task_a.get('classes')} vs {task_b.get('classes')}")
    names = names or (Path(run_a).name, Path(run_b).name)
    out = Path(out_dir) if out_dir else Path(run_a) / f"compare_{names[1]}"
    sa_all, sb_all = _scores(a, kind), _scores(b, kind)
    common = sorted(set(a["id"]) & set(b["id"]))
    if len(common) < 4:
        raise ValueError(f"{run_a} and {run_b} share only {len(common)} patients; nothing to compare")
    ia = pd.Index(a["id"]).get_indexer(common)
    ib = pd.Index(b["id"]).get_indexer(common)
    a, b, sa, sb = a.iloc[ia].reset_index(drop=True), b.iloc[ib].reset_index(drop=True), sa_all[ia], sb_all[ib]
    outcome = ["time", "event"] if kind == "survival" else ["label"]
    if not np.allclose(a[outcome].to_numpy(float), b[outcome].to_numpy(float), equal_nan=True):
        raise ValueError(f"{run_a} and {run_b} disagree on the outcome of some patients; are they the same cohort?")
    overall = _paired_test(kind, a, b, sa, sb, n_resamples, seed)
    folds = []
    for k in sorted(a["fold"].unique()):
        m = (a["fold"] == k).to_numpy()
        try:
            r = _paired_test(kind, a[m], b[m], sa[m], sb[m], n_resamples, seed)
            folds.append({"fold": int(k), "n": int(m.sum()), **{x: r[x] for x in ("a", "b", "diff", "low", "high", "pvalue")}})
        except ValueError as err:
            folds.append({"fold": int(k), "n": int(m.sum()), "error": str(err)})
    result = {"run_a": str(run_a), "run_b": str(run_b), "names": list(names), "kind": kind,
              "n_common": len(common), "only_a": int(len(sa_all) - len(common)),
              "only_b": int(len(sb_all) - len(common)), "overall": overall, "folds": folds}
    write_json(out / "compare.json", result)
    with atomic_path(out / "compare_folds.csv", suffix=".csv.tmp") as tmp:
        pd.DataFrame(folds).to_csv(tmp, index=False)
    ok = [f for f in folds if "diff" in f]
    rows = ok + [{"fold": "pooled", "n": len(common), **overall}]
    metric = overall["metric"]
    plot_forest([f"fold {r['fold']} (n={r['n']})" if r["fold"] != "pooled" else f"pooled (n={r['n']})" for r in rows],
                [r["diff"] for r in rows], [r["low"] for r in rows], [r["high"] for r in rows],
                out / "forest.png", xlabel=f"{metric}: {names[0]} - {names[1]}", reference=0.0,
                log_scale=False, title=f"{names[0]} vs {names[1]}", notes=[f"p={r['pvalue']:.2g}" for r in rows])
    test = "DeLong" if overall.get("test") == "delong" else "paired bootstrap"
    line = (f"{names[0]} {metric} {overall['a']:.3f} vs {names[1]} {overall['b']:.3f}: difference "
            f"{overall['diff']:+.3f} [{overall['low']:+.3f}, {overall['high']:+.3f}], {test} p = {overall['pvalue']:.3g} "
            f"(n={len(common)})")
    write_html_report(out / "report.html", f"{names[0]} vs {names[1]}",
                      [("Pooled out-of-fold", [line]), ("Folds", [folds, out / "forest.png"])])
    log(line)
    return result
