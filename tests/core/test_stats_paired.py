"""Valid paired tests in core/stats.py checked against statsmodels, scipy and brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from openmusk.core.stats import (delong_test, mcnemar_exact, paired_bootstrap_diff,
                                 paired_permutation_test, wilcoxon_paired_bootstrap)


def test_mcnemar_exact_matches_statsmodels() -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(1)
    for n, flip in [(284, 0.1), (60, 0.3), (15, 0.05)]:
        a = rng.random(n) < 0.7
        b = np.where(rng.random(n) < flip, ~a, a)
        got = mcnemar_exact(a, b)
        table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
        ref = mcnemar(table, exact=True)
        assert got["statistic"] == pytest.approx(ref.statistic)
        assert got["pvalue"] == pytest.approx(ref.pvalue, rel=1e-12)
        assert got["n10"] == table[0][1] and got["n01"] == table[1][0]
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["pvalue"] == 1.0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0, 2], [1, 1])
    with pytest.raises(ValueError, match="pairs must match"):
        mcnemar_exact([0, 1], [1])


def test_paired_permutation_exact_matches_scipy_and_enumeration() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.3, 1, 11), rng.normal(0, 1, 11)
    got = paired_permutation_test(a, b, n_resamples=10000)
    assert got["exact"]
    ref = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                                 permutation_type="samples", n_resamples=np.inf,
                                 alternative="two-sided")
    assert got["pvalue"] == pytest.approx(ref.pvalue, rel=1e-12)
    d = a - b  # brute force over all sign vectors
    null = [abs(np.mean(np.array(s) * d)) for s in itertools.product([-1, 1], repeat=len(d))]
    assert got["pvalue"] == pytest.approx(np.mean(np.array(null) >= abs(d.mean()) - 1e-12))
    assert got["diff"] == pytest.approx(d.mean())


def test_paired_permutation_random_close_to_scipy_and_calibrated() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.15, 1, 200), rng.normal(0, 1, 200)
    got = paired_permutation_test(a, b, n_resamples=4000, seed=0)
    ref = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                                 permutation_type="samples", n_resamples=4000, random_state=0)
    assert not got["exact"] and abs(got["pvalue"] - ref.pvalue) < 0.03
    # the same values for both models cannot be significant
    assert paired_permutation_test(a, a, n_resamples=500)["pvalue"] == 1.0
    with pytest.raises(ValueError, match="statistic"):
        paired_permutation_test(a, b, statistic="max")


def _auc_brute(pos: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong structural components by explicit pairwise comparisons."""
    sp, sn = s[pos], s[~pos]
    psi = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    return float(psi.mean()), psi.mean(axis=1), psi.mean(axis=0)


def test_delong_matches_brute_force_and_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    sa = np.round(y + rng.normal(0, 0.8, 120), 1)  # rounding makes ties
    sb = np.round(y + rng.normal(0, 1.2, 120), 1)
    got = delong_test(y, sa, sb)
    pos = y == 1
    (aa, v10a, v01a), (ab, v10b, v01b) = _auc_brute(pos, sa), _auc_brute(pos, sb)
    assert got["auc_a"] == pytest.approx(roc_auc_score(y, sa)) == pytest.approx(aa)
    assert got["auc_b"] == pytest.approx(ab)
    m, n = pos.sum(), (~pos).sum()
    var = (np.var(v10a, ddof=1) + np.var(v10b, ddof=1) - 2 * np.cov(v10a, v10b)[0, 1]) / m \
        + (np.var(v01a, ddof=1) + np.var(v01b, ddof=1) - 2 * np.cov(v01a, v01b)[0, 1]) / n
    assert got["se"] == pytest.approx(np.sqrt(var), rel=1e-10)
    assert got["z"] == pytest.approx((aa - ab) / np.sqrt(var), rel=1e-10)
    assert got["pvalue"] == pytest.approx(2 * stats.norm.sf(abs(aa - ab) / np.sqrt(var)), rel=1e-9)
    # labels {1, 2}: 2 is the positive class as in scikit-learn
    assert delong_test(y + 1, sa, sb)["auc_a"] == pytest.approx(aa)
    with pytest.raises(ValueError, match="two classes"):
        delong_test(np.zeros(10), sa[:10], sb[:10])


def test_paired_bootstrap_diff_pairs_rows() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    pa = np.where(rng.random(300) < 0.8, y, (y + 1) % 3)
    pb = np.where(rng.random(300) < 0.6, y, (y + 1) % 3)
    acc = lambda t, p: float((t == p).mean())  # noqa: E731
    got = paired_bootstrap_diff(acc, (y, pa), (y, pb), n_resamples=400, seed=0)
    assert got["diff"] == pytest.approx(acc(y, pa) - acc(y, pb))
    assert got["low"] < got["diff"] < got["high"] and got["low"] > 0 and got["pvalue"] < 0.01
    # independent re-implementation with the same generator stream
    r = np.random.default_rng(0)
    ds = []
    for _ in range(400):
        i = r.integers(0, 300, 300)
        ds.append(acc(y[i], pa[i]) - acc(y[i], pb[i]))
    assert got["low"] == pytest.approx(np.quantile(ds, 0.025))
    same = paired_bootstrap_diff(acc, (y, pa), (y, pa), n_resamples=50)
    assert same["diff"] == 0 and same["pvalue"] == 1.0


def test_paper_wilcoxon_p_shrinks_with_resamples_and_is_labelled() -> None:
    """The paper's procedure: same data, more resamples, smaller p. The valid test does not move."""
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 284)
    ca = rng.random(284) < 0.8
    cb = np.where(rng.random(284) < 0.08, ~ca, ca)
    pa, pb = np.where(ca, y, 1 - y), np.where(cb, y, 1 - y)
    acc = lambda t, p: float((t == p).mean())  # noqa: E731
    p100 = wilcoxon_paired_bootstrap(acc, (y, pa), (y, pb), n_resamples=100)
    p1000 = wilcoxon_paired_bootstrap(acc, (y, pa), (y, pb), n_resamples=1000)
    assert "NOT a valid test" in p100["warning"]
    assert p1000["p_value"] < p100["p_value"]
    assert mcnemar_exact(ca, cb)["pvalue"] > p100["p_value"]
