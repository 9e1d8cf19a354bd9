"""Figures people look at rather than read: training curves and accuracies with 95% CIs."""
from __future__ import annotations

import os
from pathlib import Path

from openmusk.core.io import save_figure

__all__ = ["plot_history", "plot_accuracies"]


def plot_history(history: list[dict], path: str | os.PathLike) -> Path:
    """Training loss and (when present) validation accuracy per epoch, saved as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy", color="tab:blue")
    if any("val_accuracy" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot([h["epoch"] for h in history if "val_accuracy" in h],
                 [100 * h["val_accuracy"] for h in history if "val_accuracy" in h], "s-",
                 color="tab:red", label="validation accuracy")
        ax2.set_ylabel("validation accuracy (%)", color="tab:red")
        ax2.set_ylim(0, 100)
    ax.set_title("VQA fine-tuning")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path


def plot_accuracies(runs: dict[str, dict], path: str | os.PathLike) -> Path:
    """Grouped bars: accuracy overall / closed / open per run, with bootstrap 95% CI whiskers.

    ``runs`` maps a run name to its accuracy dict (``{"overall": {"value", "low", "high"}, ...}``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = ["overall", "closed", "open"]
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for j, (name, acc) in enumerate(runs.items()):
        x = np.arange(len(kinds)) + (j - (len(runs) - 1) / 2) * width
        v = np.array([100 * acc[k]["value"] if k in acc else np.nan for k in kinds])
        lo = np.array([100 * acc[k]["low"] if k in acc else np.nan for k in kinds])
        hi = np.array([100 * acc[k]["high"] if k in acc else np.nan for k in kinds])
        ax.bar(x, v, width, label=name, yerr=np.stack([v - lo, hi - v]), capsize=3)
    ax.set_xticks(np.arange(len(kinds)), ["overall", "closed (yes/no)", "open"])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(runs), frameon=False)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=120)
    return path
