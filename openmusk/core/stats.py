"""Statistics shared by the patch benchmarks, slide-level models and VQA.

Bootstrap confidence intervals (percentile, seeded, 1,000 resamples as in the MUSK paper) and the
two-sample tests the paper reports (Wilcoxon signed-rank on paired bootstrap samples,
Mann-Whitney U), all through numpy/scipy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["Estimate", "bootstrap_ci", "bootstrap_samples", "mean_ci", "mann_whitney",
           "wilcoxon_paired_bootstrap"]


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


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean over repeated runs (e.g. few-shot seeds, CV folds) with a t-distribution interval."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return Estimate(m, m, m, len(v))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return Estimate(m, m - half, m + half, len(v))


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
    """
    from scipy import stats

    sa = bootstrap_samples(metric, *arrays_a, n_resamples=n_resamples, seed=seed)
    sb = bootstrap_samples(metric, *arrays_b, n_resamples=n_resamples, seed=seed)
    if len(sa) != len(sb):
        raise ValueError("paired bootstrap: the metric failed on different resamples for the two models")
    diff = sa - sb
    if np.allclose(diff, 0):
        return {"test": "wilcoxon-signed-rank", "statistic": 0.0, "p_value": 1.0,
                "mean_difference": 0.0}
    res = stats.wilcoxon(sa, sb, alternative="two-sided")
    return {"test": "wilcoxon-signed-rank", "statistic": float(res.statistic),
            "p_value": float(res.pvalue), "mean_difference": float(diff.mean())}
