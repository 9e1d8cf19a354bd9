"""Statistics shared by the patch benchmarks, slide-level models and VQA.

Bootstrap confidence intervals (percentile, seeded, 1,000 resamples as in the MUSK paper), valid
paired tests for two models scored on the same samples (exact McNemar, paired permutation, DeLong
for AUC, paired bootstrap of the difference) and, kept for reproduction only, the paper's Wilcoxon
signed-rank test on paired bootstrap replicates (not a valid test: its p-value shrinks with the
number of resamples), all through numpy/scipy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["Estimate", "PAPER_WILCOXON_WARNING", "bootstrap_ci", "bootstrap_samples", "delong_test",
           "mann_whitney", "mcnemar_exact", "mean_ci", "paired_bootstrap_diff",
           "paired_permutation_test", "wilcoxon_paired_bootstrap"]

PAPER_WILCOXON_WARNING = (
    "the MUSK paper's procedure (Wilcoxon signed-rank on paired bootstrap replicates), kept to "
    "reproduce its tables; NOT a valid test: its p-value shrinks as n_resamples grows with the data "
    "fixed. Use mcnemar/permutation/delong/paired-bootstrap for inference.")


@dataclass
class Estimate:
    """A point estimate with its 95% (or other) confidence interval."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def bootstrap_samples(metric: Callable[..., float], *arrays: Sequence, n_resamples: int = 1000,
                      seed: int = 0, stratify: Sequence | None = None) -> np.ndarray:
    """Metric values on ``n_resamples`` resamples (with replacement) of the rows of ``arrays``.

    Every array is indexed by the same resampled rows, so paired quantities (labels and scores)
    stay paired. With ``stratify``, rows are resampled within each stratum (keeps class balance,
    so AUC stays defined). A resample on which the metric fails (e.g. one class only) is skipped.
    """
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError(f"bootstrap: arrays have different lengths {[len(a) for a in arrs]}")
    if n == 0:
        raise ValueError("bootstrap: no samples")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if stratify is None else [
        np.flatnonzero(np.asarray(stratify) == s) for s in np.unique(stratify)]
    out = []
    for _ in range(n_resamples):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        try:
            out.append(float(metric(*[a[idx] for a in arrs])))
        except ValueError:
            continue
    return np.asarray(out, dtype=np.float64)


def bootstrap_ci(metric: Callable[..., float], *arrays: Sequence, n_resamples: int = 1000,
                 seed: int = 0, confidence: float = 0.95,
                 stratify: Sequence | None = None) -> Estimate:
    """Point estimate of ``metric(*arrays)`` with a percentile bootstrap confidence interval."""
    value = float(metric(*[np.asarray(a) for a in arrays]))
    samples = bootstrap_samples(metric, *arrays, n_resamples=n_resamples, seed=seed,
                                stratify=stratify)
    if len(samples) == 0:
        return Estimate(value, float("nan"), float("nan"), len(np.asarray(arrays[0])))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return Estimate(value, float(low), float(high), len(np.asarray(arrays[0])))


def mean_ci(values: Sequence[float], confidence: float = 0.95,
            bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean over repeated runs (e.g. few-shot seeds, CV folds) with a t-distribution interval.

    ``bounds``: the metric's range (``(0, 1)`` for AUC or c-index); the interval is clipped to it,
    as a t-interval over few folds can otherwise leave it.
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return Estimate(m, m, m, len(v))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    low, high = m - half, m + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(m, low, high, len(v))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Mann-Whitney U test between two groups of outcomes (e.g. per-fold AUCs)."""
    from scipy import stats

    res = stats.mannwhitneyu(np.asarray(a, float), np.asarray(b, float), alternative="two-sided")
    return {"test": "mann-whitney-u", "statistic": float(res.statistic), "p_value": float(res.pvalue)}


def wilcoxon_paired_bootstrap(metric: Callable[..., float], arrays_a: Sequence[Sequence],
                              arrays_b: Sequence[Sequence], n_resamples: int = 1000,
                              seed: int = 0) -> dict:
    """Two-sided Wilcoxon signed-rank test on paired bootstrap samples of two models' metric.

    Both models are evaluated on the *same* resampled rows (same seed), as in the MUSK paper's
    model comparisons; ``arrays_a``/``arrays_b`` are the per-sample arrays each metric takes.
    The paper's procedure, kept for reproduction: see ``PAPER_WILCOXON_WARNING``.
    """
    from scipy import stats

    sa = bootstrap_samples(metric, *arrays_a, n_resamples=n_resamples, seed=seed)
    sb = bootstrap_samples(metric, *arrays_b, n_resamples=n_resamples, seed=seed)
    if len(sa) != len(sb):
        raise ValueError("paired bootstrap: the metric failed on different resamples for the two models")
    diff = sa - sb
    if np.allclose(diff, 0):
        return {"test": "wilcoxon-signed-rank", "statistic": 0.0, "p_value": 1.0,
                "mean_difference": 0.0, "warning": PAPER_WILCOXON_WARNING}
    res = stats.wilcoxon(sa, sb, alternative="two-sided")
    return {"test": "wilcoxon-signed-rank", "statistic": float(res.statistic),
            "p_value": float(res.pvalue), "mean_difference": float(diff.mean()),
            "warning": PAPER_WILCOXON_WARNING}


def _paired(a: Sequence, b: Sequence, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length 1-D float arrays, or a clear error naming ``what``."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"{what}: the two models have {len(x)} and {len(y)} samples; pairs must match")
    if len(x) == 0:
        raise ValueError(f"{what}: no samples")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{what}: NaN or infinite values ({int((~np.isfinite(x)).sum())} in a, "
                         f"{int((~np.isfinite(y)).sum())} in b)")
    return x, y


def mcnemar_exact(correct_a: Sequence, correct_b: Sequence) -> dict:
    """Exact (binomial) McNemar test on per-sample correctness of two models on the same samples.

    ``n01`` counts samples model a got wrong and b right, ``n10`` the reverse; the statistic is
    ``min(n01, n10)`` and the two-sided p-value ``min(1, 2 * Binom(n01 + n10, 1/2).cdf(statistic))``,
    as statsmodels' ``mcnemar(exact=True)``.
    """
    from scipy import stats

    a, b = _paired(correct_a, correct_b, "mcnemar_exact")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("mcnemar_exact: correctness must be boolean or 0/1 per sample")
    n01 = int(((a == 0) & (b == 1)).sum())
    n10 = int(((a == 1) & (b == 0)).sum())
    k = min(n01, n10)
    p = 1.0 if n01 + n10 == 0 else min(1.0, 2.0 * float(stats.binom.cdf(k, n01 + n10, 0.5)))
    return {"test": "mcnemar-exact", "statistic": float(k), "pvalue": p, "n01": n01, "n10": n10}


def paired_permutation_test(values_a: Sequence, values_b: Sequence, n_resamples: int = 10000,
                            seed: int = 0, statistic: str = "mean") -> dict:
    """Two-sided paired permutation (sign-flip) test of per-sample values of two models.

    Under the null the two values of each pair are exchangeable, so the sign of each difference is
    flipped at random; ``statistic`` ("mean" or "median") of the differences is compared in absolute
    value. All ``2**n`` flips are enumerated when that is at most ``n_resamples`` (exact p-value, as
    scipy's ``permutation_test``); otherwise the p-value is ``(1 + #{|T*| >= |T|}) / (1 + n_resamples)``.
    """
    a, b = _paired(values_a, values_b, "paired_permutation_test")
    funcs = {"mean": np.mean, "median": np.median}
    if statistic not in funcs:
        raise ValueError(f"paired_permutation_test: statistic must be one of {sorted(funcs)}, "
                         f"got {statistic!r}")
    fn = funcs[statistic]
    d = a - b
    observed = float(fn(d))
    n = len(d)
    exact = n <= 20 and 2 ** n <= n_resamples
    total = 2 ** n if exact else n_resamples
    rng = np.random.default_rng(seed)
    tol = 1e-12 * max(1.0, abs(observed))
    hits, block = 0, max(1, 4_000_000 // n)   # sign matrices of at most ~32 MB at a time
    for start in range(0, total, block):
        rows = min(block, total - start)
        if exact:
            signs = 1.0 - 2.0 * (((start + np.arange(rows))[:, None] >> np.arange(n)) & 1)
        else:
            signs = rng.choice([-1.0, 1.0], size=(rows, n))
        hits += int((np.abs(fn(signs * d, axis=1)) >= abs(observed) - tol).sum())
    p = hits / total if exact else (hits + 1) / (n_resamples + 1)
    return {"test": f"paired-permutation-{statistic}", "diff": observed, "pvalue": min(1.0, p),
            "exact": exact, "n": n}


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based) with ties given their average rank."""
    from scipy import stats

    return stats.rankdata(x, method="average")


def _binary_labels(y_true: Sequence, what: str) -> np.ndarray:
    """Boolean positives from two-valued labels; the larger label is positive, as scikit-learn."""
    y = np.asarray(y_true).ravel()
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"{what}: needs exactly two classes in y_true, got {classes.tolist()}")
    return y == classes[1]


def delong_test(y_true: Sequence, scores_a: Sequence, scores_b: Sequence) -> dict:
    """DeLong's test for the difference of two correlated binary ROC AUCs on the same samples.

    Uses the structural components of DeLong et al. (1988), computed with mid-ranks (Sun & Xu,
    2014): ``V10[i] = P(score_pos_i > score_neg) + 0.5 P(=)`` and ``V01`` likewise for negatives;
    ``var(diff) = c' S10 c / m + c' S01 c / n`` with ``c = (1, -1)``. Two-sided normal p-value.
    """
    from scipy import stats

    pos = _binary_labels(y_true, "delong_test")
    sa, sb = _paired(scores_a, scores_b, "delong_test")
    if len(sa) != len(pos):
        raise ValueError(f"delong_test: {len(pos)} labels but {len(sa)} scores")
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError(f"delong_test: needs at least 2 positives and 2 negatives, got {m} and {n}")
    v10, v01, aucs = [], [], []
    for s in (sa, sb):
        tx, ty, tz = _midrank(s[pos]), _midrank(s[~pos]), _midrank(np.concatenate([s[pos], s[~pos]]))
        auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
        aucs.append(float(auc))
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    c = np.array([1.0, -1.0])
    var = float(c @ s10 @ c / m + c @ s01 @ c / n)
    diff = aucs[0] - aucs[1]
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (float(np.sign(diff) * np.inf), 0.0)
        se = 0.0
    else:
        se = float(np.sqrt(var))
        z = diff / se
        p = float(2.0 * stats.norm.sf(abs(z)))
    return {"test": "delong", "auc_a": aucs[0], "auc_b": aucs[1], "diff": diff, "se": se,
            "z": float(z), "pvalue": p}


def paired_bootstrap_diff(metric_fn: Callable[..., float], arrays_a: Sequence[Sequence],
                          arrays_b: Sequence[Sequence], n_resamples: int = 1000, seed: int = 0,
                          alpha: float = 0.05) -> dict:
    """Paired bootstrap of ``metric_fn(*arrays_a) - metric_fn(*arrays_b)`` with a percentile CI.

    Each resample draws the same row indices for both models (pairing kept); resamples where
    either metric fails (e.g. one class only) are skipped for both. The p-value is the two-sided
    bootstrap p-value for ``diff = 0``: ``min(1, 2 * min(P(d* <= 0), P(d* >= 0)))``.
    """
    arrs_a = [np.asarray(x) for x in arrays_a]
    arrs_b = [np.asarray(x) for x in arrays_b]
    n = len(arrs_a[0])
    if any(len(x) != n for x in arrs_a + arrs_b):
        raise ValueError(f"paired_bootstrap_diff: arrays have different lengths "
                         f"{[len(x) for x in arrs_a + arrs_b]}; both models must score the same rows")
    if n == 0:
        raise ValueError("paired_bootstrap_diff: no samples")
    if not 0 < alpha < 1:
        raise ValueError(f"paired_bootstrap_diff: alpha must be in (0, 1), got {alpha}")
    diff = float(metric_fn(*arrs_a)) - float(metric_fn(*arrs_b))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        try:
            out.append(float(metric_fn(*[x[idx] for x in arrs_a]))
                       - float(metric_fn(*[x[idx] for x in arrs_b])))
        except ValueError:
            continue
    d = np.asarray(out, dtype=np.float64)
    if len(d) == 0:
        raise ValueError("paired_bootstrap_diff: the metric failed on every resample")
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2.0 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    return {"test": "paired-bootstrap", "diff": diff, "low": float(low), "high": float(high),
            "pvalue": p, "n_resamples": int(len(d))}
