"""Result plots (matplotlib, Agg): ROC curves and Kaplan-Meier curves of predicted risk groups."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from openmusk.core.io import save_figure

__all__ = ["plot_roc", "plot_km"]


def plot_roc(labels: Sequence[int], probs: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
             title: str = "") -> Path:
    """ROC curve (binary) or one-vs-rest curves (multi-class), AUC in the legend."""
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
        ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {roc_auc(y == c, p[:, c]):.3f})")
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
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, colour in (("high", "tab:red"), ("low", "tab:blue")):
        res["km"][name].plot_survival_function(ax=ax, ci_show=True, color=colour)
    ax.set(xlabel="time", ylabel="survival probability", ylim=(0, 1.02),
           title=title or "Kaplan-Meier by predicted risk (median split)")
    ax.text(0.02, 0.04, f"log-rank p = {res['logrank_p']:.3g}\nHR = {res['hazard_ratio']:.2f} "
            f"[{res['hr_low']:.2f}, {res['hr_high']:.2f}]", transform=ax.transAxes, fontsize=9)
    return save_figure(fig, path, bbox_inches="tight")
