"""Result plots (matplotlib, Agg): ROC curves with a bootstrap band, Kaplan-Meier curves with numbers
at risk, calibration and forest plots; each written as PNG (and embedded in the HTML run report)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from openmusk.core.io import save_figure

__all__ = ["plot_roc", "plot_km", "plot_calibration", "plot_forest", "plot_km_groups", "roc_band"]


def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score threshold, from (0, 0); numpy only (fast in a bootstrap)."""
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]
    tp, fp = np.cumsum(ys)[last], np.cumsum(~ys)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def roc_band(labels: Sequence[int], scores: Sequence[float], n_resamples: int = 200, seed: int = 0,
             grid: int = 101) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr grid, 2.5% TPR, 97.5% TPR): pointwise stratified-bootstrap band of a binary ROC curve."""
    y, s = np.asarray(labels).astype(bool), np.asarray(scores, float)
    fpr_grid = np.linspace(0, 1, grid)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    curves = []
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        fpr, tpr = _roc_points(y[idx], s[idx])
        curves.append(np.interp(fpr_grid, fpr, tpr))
    low, high = np.quantile(np.asarray(curves), [0.025, 0.975], axis=0)
    return fpr_grid, low, high


def plot_roc(labels: Sequence[int], probs: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
             title: str = "", band_resamples: int = 200) -> Path:
    """ROC curve (binary, with a 95% bootstrap band) or one-vs-rest curves (multi-class), AUC in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from openmusk.mil.metrics import roc_auc

    y, p = np.asarray(labels).astype(int), np.asarray(probs, float)
    fig, ax = plt.subplots(figsize=(5, 5))
    targets = [1] if p.shape[1] == 2 else range(p.shape[1])
    for c in targets:
        if len(np.unique(y == c)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        name = classes[c] if p.shape[1] > 2 else f"{classes[1]} vs {classes[0]}"
        line, = ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {roc_auc(y == c, p[:, c]):.3f})")
        if p.shape[1] == 2 and band_resamples:
            grid, low, high = roc_band(y == c, p[:, c], band_resamples)
            ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, label="95% bootstrap band")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=title or f"ROC, n={len(y)}")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path, bbox_inches="tight")


def plot_km(times: Sequence[float], events: Sequence[int], high_risk: Sequence[bool],
            path: str | os.PathLike, title: str = "") -> Path:
    """Kaplan-Meier curves of the high- and low-risk groups with log-rank p and hazard ratio."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openmusk.mil.metrics import km_risk_groups

    hr = np.asarray(high_risk, bool)
    res = km_risk_groups(times, events, hr.astype(float), threshold=0.5)
    from lifelines.plotting import add_at_risk_counts

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, colour in (("high", "tab:red"), ("low", "tab:blue")):
        res["km"][name].plot_survival_function(ax=ax, ci_show=True, color=colour)
    add_at_risk_counts(res["km"]["high"], res["km"]["low"], ax=ax, rows_to_show=["At risk"])
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02),
           title=title or "Kaplan-Meier by predicted risk (median split)")
    ax.text(0.02, 0.04, f"log-rank p = {res['logrank_p']:.3g}\nHR = {res['hazard_ratio']:.2f} "
            f"[{res['hr_low']:.2f}, {res['hr_high']:.2f}]", transform=ax.transAxes, fontsize=9)
    return save_figure(fig, path, bbox_inches="tight")


def plot_km_groups(times: Sequence[float], events: Sequence[int], groups: Sequence, path: str | os.PathLike,
                   title: str = "") -> Path:
    """Kaplan-Meier curves of arbitrary groups (e.g. risk groups within a subgroup) with numbers at risk."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    t, e, g = np.asarray(times, float), np.asarray(events).astype(int), np.asarray(groups).astype(str)
    fig, ax = plt.subplots(figsize=(6, 5))
    fits = []
    for name in sorted(set(g)):
        m = g == name
        fits.append(KaplanMeierFitter(label=f"{name} (n={int(m.sum())})").fit(t[m], e[m]))
        fits[-1].plot_survival_function(ax=ax, ci_show=False)
    add_at_risk_counts(*fits, ax=ax, rows_to_show=["At risk"])
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02), title=title)
    return save_figure(fig, path, bbox_inches="tight")


def plot_calibration(labels: Sequence[int], probs: Sequence[float], path: str | os.PathLike,
                     n_bins: int = 10, title: str = "") -> Path:
    """Reliability diagram: observed positive rate against mean predicted probability per quantile bin."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = np.asarray(labels, float), np.asarray(probs, float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins = [b for b in np.unique(idx)]
    mean_p = [p[idx == b].mean() for b in bins]
    obs = [y[idx == b].mean() for b in bins]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(mean_p, obs, "o-", lw=2, label=f"model ({len(bins)} quantile bins)")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction positive", xlim=(0, 1),
           ylim=(0, 1), title=title or f"Calibration, n={len(y)}")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path, bbox_inches="tight")


def plot_forest(labels: Sequence[str], estimates: Sequence[float], lows: Sequence[float],
                highs: Sequence[float], path: str | os.PathLike, xlabel: str = "hazard ratio",
                reference: float = 1.0, log_scale: bool = True, title: str = "",
                notes: Sequence[str] | None = None) -> Path:
    """Forest plot: one row per estimate with its 95% CI, a reference line (1 for HR, 0 for differences)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(7, 0.45 * n + 1.4))
    y = np.arange(n)[::-1]
    est, lo, hi = (np.asarray(v, float) for v in (estimates, lows, highs))
    ax.errorbar(est, y, xerr=[np.maximum(est - lo, 0), np.maximum(hi - est, 0)], fmt="s", color="k",
                ecolor="tab:blue", capsize=3)
    ax.axvline(reference, color="grey", ls="--", lw=1)
    if log_scale:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    if notes:
        for yy, note in zip(y, notes):
            ax.annotate(note, (1.01, yy), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set(xlabel=xlabel, title=title, ylim=(-0.7, n - 0.3))
    return save_figure(fig, path, bbox_inches="tight")
