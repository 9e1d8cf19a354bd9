"""Statistical comparison of two models' results on the same dataset and task.

Per-sample tasks (zero-shot, probes, kNN, retrieval) use the two-sided Wilcoxon signed-rank test
on paired bootstrap samples (both models resampled on the same rows, as in the MUSK paper);
few-shot uses the two-sided Mann-Whitney U test between the two models' per-seed scores.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from openmusk.eval.metrics import CLASSIFICATION_METRICS, recall_at_k
from openmusk.core.stats import mann_whitney, wilcoxon_paired_bootstrap

__all__ = ["compare_results", "metric_inputs"]


def metric_inputs(result: dict, metric: str) -> tuple[Callable[..., float], tuple[np.ndarray, ...]]:
    """The metric function and the per-sample arrays that reproduce ``result[metrics][metric]``."""
    ps = result["per_sample"]
    if metric in CLASSIFICATION_METRICS and "y_pred" in ps:
        return CLASSIFICATION_METRICS[metric], (np.asarray(ps["y_true"]), np.asarray(ps["y_pred"]))
    if result["task"] == "retrieval":
        direction, k = metric.split("_R@")
        return np.mean, (recall_at_k(np.asarray(ps[f"{direction}_rank"]), int(k)),)
    if metric in ps:
        return np.mean, (np.asarray(ps[metric], dtype=np.float64),)
    raise KeyError(f"{result.get('model')}/{result.get('dataset')}/{result['task']}: no per-sample "
                   f"data for metric {metric!r}")


def compare_results(a: dict, b: dict, n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Two-sided tests of model ``a`` vs ``b`` for every metric the two results share."""
    if a["task"] != b["task"]:
        raise ValueError(f"cannot compare task {a['task']!r} with {b['task']!r}")
    out: dict[str, dict] = {}
    if a["task"] == "few_shot":
        for k, seeds_a in a["per_sample"]["per_seed"].items():
            seeds_b = b["per_sample"]["per_seed"].get(k)
            if seeds_b is None:
                continue
            for m in seeds_a:
                res = mann_whitney(seeds_a[m], seeds_b[m])
                res["mean_difference"] = float(np.mean(seeds_a[m]) - np.mean(seeds_b[m]))
                out[f"{m}@{k}shot"] = res
        return out
    if "y_true" in a["per_sample"] and a["per_sample"]["y_true"] != b["per_sample"]["y_true"]:
        raise ValueError("the two results were computed on different test samples (y_true differs); "
                         "compare models on the same split")
    for metric in a["metrics"]:
        if metric not in b["metrics"]:
            continue
        fa, arrays_a = metric_inputs(a, metric)
        _, arrays_b = metric_inputs(b, metric)
        if len(arrays_a[0]) != len(arrays_b[0]):
            raise ValueError(f"{metric}: {len(arrays_a[0])} vs {len(arrays_b[0])} samples; the two "
                             "results are not paired")
        out[metric] = wilcoxon_paired_bootstrap(fa, arrays_a, arrays_b, n_resamples=n_resamples,
                                                seed=seed)
    return out
