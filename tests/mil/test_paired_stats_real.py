"""`mil compare`'s DeLong test and paired c-index bootstrap, subgroups and clinical baselines, checked
against independent computations on the real GBSG2 breast-cancer cohort shipped with scikit-survival."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from openmusk.core.io import write_json
from openmusk.mil import compare_runs


@pytest.fixture(scope="module")
def gbsg2():
    """686 patients with two clinical risk scores and three random folds."""
    from sksurv.datasets import load_gbsg2

    X, y = load_gbsg2()
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": [f"g{i}" for i in range(len(X))], "fold": rng.integers(0, 3, len(X)),
        "time": y["time"].astype(float), "event": y["cens"].astype(int),
        "nodes": X["pnodes"].to_numpy(float), "size": X["tsize"].to_numpy(float),
        "grade": X["tgrade"].astype(str).to_numpy(), "hormone": X["horTh"].astype(str).to_numpy()})


def _run(path, table, task):
    write_json(path / "fold_0" / "task.json", task)
    table.to_csv(path / "oof_predictions.csv", index=False)
    return path


def kernel_delong(y, a, b):
    """DeLong from the Mann-Whitney kernel matrix (not mid-ranks): difference and two-sided p."""
    from scipy.stats import norm

    y = np.asarray(y).astype(bool)
    comps = []
    for s in (a, b):
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        comps.append((psi.mean(), psi.mean(1), psi.mean(0)))
    var = np.var(comps[0][1] - comps[1][1], ddof=1) / y.sum() + np.var(comps[0][2] - comps[1][2], ddof=1) / (~y).sum()
    diff = comps[0][0] - comps[1][0]
    return diff, 2 * norm.sf(abs(diff) / np.sqrt(var))


def test_delong_on_real_binary_endpoint(gbsg2, tmp_path):
    d = gbsg2[(gbsg2["time"] > 1000) | (gbsg2["event"] == 1)].copy()   # status at 1000 days is known
    d["label"] = (d["time"] <= 1000).astype(int)
    runs = []
    for name, col in (("nodes", "nodes"), ("size", "size")):
        p = 1 / (1 + np.exp(-(d[col] - d[col].mean()) / d[col].std()))
        runs.append(_run(tmp_path / name, pd.DataFrame({"id": d["id"], "fold": d["fold"], "label": d["label"],
                                                        "prob_0": 1 - p, "prob_1": p}),
                         {"kind": "classification", "classes": ["0", "1"]}))
    res = compare_runs(*runs, out_dir=tmp_path / "cmp", log=lambda s: None)
    diff, p = kernel_delong(d["label"].to_numpy(), d["nodes"].to_numpy(), d["size"].to_numpy())
    from sklearn.metrics import roc_auc_score

    assert res["overall"]["a"] == pytest.approx(roc_auc_score(d["label"], d["nodes"]))
    assert res["overall"]["diff"] == pytest.approx(diff) and res["overall"]["pvalue"] == pytest.approx(p, rel=1e-6)
    assert 0 < p < 1 and len(res["folds"]) == 3 and (tmp_path / "cmp" / "forest.png").is_file()


def test_paired_cindex_bootstrap_on_real_survival(gbsg2, tmp_path):
    from sksurv.metrics import concordance_index_censored

    a = _run(tmp_path / "a", gbsg2.assign(risk=gbsg2["nodes"])[["id", "fold", "time", "event", "risk"]],
             {"kind": "survival"})
    b = _run(tmp_path / "b", gbsg2.assign(risk=gbsg2["size"])[["id", "fold", "time", "event", "risk"]],
             {"kind": "survival"})
    res = compare_runs(a, b, n_resamples=50, seed=3, log=lambda s: None)["overall"]
    g = gbsg2.sort_values("id")  # compare_runs pairs the runs' rows by sorted patient id
    t, e = g["time"].to_numpy(), g["event"].to_numpy().astype(bool)
    ra = g.groupby("fold")["nodes"].rank(pct=True).to_numpy()
    rb = g.groupby("fold")["size"].rank(pct=True).to_numpy()

    def c(idx, r):
        return concordance_index_censored(e[idx], t[idx], r[idx])[0]

    full = np.arange(len(t))
    assert res["diff"] == pytest.approx(c(full, ra) - c(full, rb))
    rng = np.random.default_rng(3)  # an independent loop over the same resamples, sksurv's c-index
    diffs = []
    for _ in range(50):
        idx = rng.integers(0, len(t), len(t))
        diffs.append(c(idx, ra) - c(idx, rb))
    assert [res["low"], res["high"]] == pytest.approx(list(np.quantile(diffs, [0.025, 0.975])))
    d = np.array(diffs)
    assert res["pvalue"] == pytest.approx(min(1, 2 * min((d <= 0).mean(), (d >= 0).mean())))


def test_subgroups_and_clinical_baseline_on_real_survival(gbsg2, tmp_path):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    from openmusk.mil.html_report import write_html_report
    from openmusk.mil.plots import plot_forest, plot_km_groups
    from openmusk.mil.subgroups import clinical_baseline, subgroup_analysis

    oof = gbsg2.assign(risk=gbsg2["nodes"] + gbsg2["size"] / 20)
    oof["risk_group"] = np.where(oof["risk"] > oof.groupby("fold")["risk"].transform("median"), "high", "low")
    table = gbsg2.set_index("id")[["hormone", "grade"]]
    rows = subgroup_analysis(oof, table, "hormone", "survival", n_resamples=20)
    assert [r["group"] for r in rows] == ["no", "yes"]
    for r in rows:  # HR of the high-risk group within the subgroup: sksurv's Cox fit
        m = (oof["hormone"] == r["group"]).to_numpy()
        x = (oof.loc[m, "risk_group"] == "high").to_numpy(float)[:, None]
        cox = CoxPHSurvivalAnalysis().fit(x, Surv.from_arrays(oof.loc[m, "event"] == 1, oof.loc[m, "time"]))
        assert r["hazard_ratio"] == pytest.approx(np.exp(cox.coef_[0]), rel=1e-3) and r["n"] == m.sum()
    base = clinical_baseline(oof, table, ["grade"], "survival", n_resamples=20)
    score = np.zeros(len(oof))
    X = pd.get_dummies(oof["grade"], drop_first=True, dtype=float).to_numpy()
    for k in range(3):  # the same folds, fitted with sksurv instead of lifelines
        tr, te = oof["fold"].to_numpy() != k, oof["fold"].to_numpy() == k
        cox = CoxPHSurvivalAnalysis().fit(X[tr], Surv.from_arrays(oof["event"][tr] == 1, oof["time"][tr]))
        score[te] = X[te] @ cox.coef_
    rank = pd.Series(score).groupby(oof["fold"].to_numpy()).rank(pct=True).to_numpy()
    assert base["c_index"] == pytest.approx(concordance_index_censored(oof["event"] == 1, oof["time"], rank)[0])
    assert 0 <= base["model_vs_baseline"]["pvalue"] <= 1
    png = plot_forest([f"hormone={r['group']}" for r in rows], [r["hazard_ratio"] for r in rows],
                      [r["hr_low"] for r in rows], [r["hr_high"] for r in rows], tmp_path / "forest.png")
    km = plot_km_groups(oof["time"], oof["event"], oof["risk_group"], tmp_path / "km.png")
    html = write_html_report(tmp_path / "r.html", "t", [("Subgroups", [rows, png, km])]).read_text()
    assert html.count("data:image/png;base64,") == 2 and "<td>yes</td>" in html
