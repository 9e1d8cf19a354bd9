"""Every slide-level statistic against an independent implementation, on real clinical data."""
from __future__ import annotations

import numpy as np
import pytest

from openmusk.mil import metrics


@pytest.fixture(scope="module")
def gbsg2():
    """GBSG2 breast-cancer cohort (686 patients, scikit-survival) with a clinical risk score."""
    from sksurv.datasets import load_gbsg2

    X, y = load_gbsg2()
    risk = (X["pnodes"].to_numpy() / 5 - np.log1p(X["progrec"].to_numpy())
            + (X["tgrade"].astype(str) == "III").to_numpy() + X["tsize"].to_numpy() / 30)
    return X, y["time"].astype(float), y["cens"].astype(int), risk


@pytest.fixture(scope="module")
def veterans():
    """Veterans' lung-cancer trial (137 patients, many tied times) with Karnofsky score as risk."""
    from sksurv.datasets import load_veterans_lung_cancer

    X, y = load_veterans_lung_cancer()
    return y["Survival_in_days"].astype(float), y["Status"].astype(int), -X["Karnofsky_score"].to_numpy()


def test_harrell_c_matches_sksurv_and_lifelines(gbsg2, veterans):
    from lifelines.utils import concordance_index
    from sksurv.metrics import concordance_index_censored

    for t, e, r in (gbsg2[1:], veterans):
        ours = metrics.harrell_c(t, e, r)
        ref = concordance_index_censored(e.astype(bool), t, r)[0]
        assert ours == pytest.approx(ref, abs=1e-12)
        assert ours == pytest.approx(concordance_index(t, -r, e), abs=2e-3)
    assert 0.6 < metrics.harrell_c(*gbsg2[1:]) < 0.75  # the clinical score is prognostic


def test_uno_c_matches_sksurv(gbsg2, veterans):
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    for t, e, r in (gbsg2[1:], veterans):
        half = len(t) // 2
        tr, te = slice(0, half), slice(half, None)
        tau = float(t[tr][e[tr] == 1].max())
        ref = concordance_index_ipcw(Surv.from_arrays(e[tr], t[tr]), Surv.from_arrays(e[te], t[te]),
                                     r[te], tau=tau)[0]
        assert metrics.uno_c(t[tr], e[tr], t[te], e[te], r[te], tau=tau) == pytest.approx(ref, abs=1e-10)


def test_censoring_survival_matches_sksurv(veterans):
    from sksurv.nonparametric import kaplan_meier_estimator

    t, e, _ = veterans
    times, g = kaplan_meier_estimator(e.astype(bool), t, reverse=True)
    np.testing.assert_allclose(metrics.censoring_survival(t, e)(times), g, atol=1e-12)


def test_km_logrank_hr_against_sksurv_and_lifelines(gbsg2):
    from sksurv.compare import compare_survival
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv

    _, t, e, r = gbsg2
    res = metrics.km_risk_groups(t, e, r)
    high = r > np.median(r)
    assert res["n_high"] == high.sum() and res["n_low"] == (~high).sum()
    chisq, p = compare_survival(Surv.from_arrays(e, t), high)
    assert res["logrank_statistic"] == pytest.approx(chisq, rel=1e-8)
    assert res["logrank_p"] == pytest.approx(p, rel=1e-6)
    assert res["logrank_p"] < 1e-4 and res["hazard_ratio"] > 1.5  # high-risk group does worse
    times, surv = kaplan_meier_estimator(e[high].astype(bool), t[high])
    np.testing.assert_allclose(res["km"]["high"].survival_function_at_times(times).to_numpy(), surv,
                               atol=1e-12)
    # hazard ratio (lifelines, Efron ties) against scikit-survival's Cox model with Efron ties
    cox = CoxPHSurvivalAnalysis(ties="efron").fit(high[:, None].astype(float), Surv.from_arrays(e, t))
    assert res["hazard_ratio"] == pytest.approx(np.exp(cox.coef_[0]), rel=1e-5)
    assert res["hr_low"] < res["hazard_ratio"] < res["hr_high"]


def test_cox_multivariable(gbsg2):
    X, t, e, r = gbsg2
    res = metrics.cox_multivariable(t, e, r, X[["age", "horTh", "menostat"]])
    assert set(res["terms"]) == {"risk_score", "age", "horTh_yes", "menostat_Post"}
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    design = np.column_stack([(r - r.mean()) / r.std(), X["age"], X["horTh"] == "yes",
                              X["menostat"] == "Post"]).astype(float)
    ref = CoxPHSurvivalAnalysis(ties="efron").fit(design, Surv.from_arrays(e, t))
    ours = [res["terms"][k]["hazard_ratio"] for k in ("risk_score", "age", "horTh_yes", "menostat_Post")]
    np.testing.assert_allclose(ours, np.exp(ref.coef_), rtol=1e-4)
    assert res["terms"]["risk_score"]["hazard_ratio"] > 1.3 and res["terms"]["risk_score"]["p"] < 1e-6
    assert res["terms"]["horTh_yes"]["hazard_ratio"] < 1  # hormone therapy is protective in GBSG2
    with pytest.raises(ValueError, match="missing values"):
        metrics.cox_multivariable(t, e, r, X[["age"]].assign(age=np.where(np.arange(len(t)) == 3, np.nan, X["age"])))


def test_auc_against_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(y * 0.8 + rng.normal(size=300), 1)  # rounding creates ties
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    y3 = rng.integers(0, 3, 300)
    p3 = rng.dirichlet(np.ones(3), 300) + np.eye(3)[y3] * 0.3
    assert metrics.roc_auc(y3, p3) == pytest.approx(
        roc_auc_score(y3, p3 / p3.sum(1, keepdims=True), multi_class="ovr", average="macro"), abs=1e-12)
    est = metrics.auc_ci(y, s, n_resamples=200)
    assert est.low < est.value < est.high


def test_specificity_at_sensitivity_brute_force():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(y + rng.normal(size=200), 1)
    best = 0.0
    for thr in np.unique(s):  # brute force over every threshold
        pred = s >= thr
        if pred[y == 1].mean() >= 0.9:
            best = max(best, (~pred[y == 0]).mean())
    assert metrics.specificity_at_sensitivity(y, s, 0.9) == pytest.approx(best)
    fpr, tpr, _ = roc_curve(y, s)
    assert metrics.specificity_at_sensitivity(y, s, 0.9) == pytest.approx(1 - fpr[tpr >= 0.9].min())


def test_balanced_accuracy_against_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 3, 100), rng.integers(0, 3, 100)
    assert metrics.balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))


def test_compare_models_against_scipy():
    from scipy.stats import mannwhitneyu, permutation_test

    a, b = [0.81, 0.84, 0.79, 0.86, 0.83, 0.80], [0.71, 0.75, 0.70, 0.78, 0.72, 0.81]
    res = metrics.compare_models(a, b)   # paired folds: exact sign flips, as scipy's paired permutation
    ref = permutation_test((a, b), lambda x, y: np.mean(np.subtract(x, y)), permutation_type="samples",
                           n_resamples=np.inf)
    assert res["p_value"] == pytest.approx(ref.pvalue) and res["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    old = metrics.compare_models(a, b, test="mann-whitney")
    assert old["p_value"] == pytest.approx(mannwhitneyu(a, b).pvalue)


def test_survival_metrics_bundle(gbsg2):
    _, t, e, r = gbsg2
    out = metrics.survival_metrics(t, e, r, n_resamples=50)
    assert out["c_index"]["value"] == pytest.approx(metrics.harrell_c(t, e, r))
    assert out["c_index"]["low"] < out["c_index"]["value"] < out["c_index"]["high"]
    assert 0.6 < out["uno_c_index"] < 0.8 and out["km_split"]["logrank_p"] < 1e-4
