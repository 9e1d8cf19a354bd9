"""Statistical comparison of two models' results on the same dataset and task.

Default (``method="paired"``), valid paired tests on the per-sample outcomes both models share:
* accuracy and every per-query hit rate (Recall@k, Acc@k, mMV@k): exact McNemar on the per-sample
  correctness;
* other per-sample means (mAP@k): a paired sign-flip permutation test;
* balanced accuracy, weighted F1: the paired bootstrap p-value of the difference;
* few-shot: a paired permutation test over the seeds (seed s of both models = the same k-shot
  training items);
and, for every metric, the paired-bootstrap 95% CI of the difference (``low``, ``high``).

``method="paper"`` reproduces the MUSK paper's comparison: a Wilcoxon signed-rank test on paired
bootstrap replicates. Its p-value is not a valid test (it shrinks as the number of resamples grows,
see :data:`openmusk.core.stats.PAPER_WILCOXON_WARNING`); it is kept to reproduce the paper's tables.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from openmusk.core.stats import (mcnemar_exact, paired_bootstrap_diff, paired_permutation_test,
                                 wilcoxon_paired_bootstrap)
from openmusk.eval.metrics import CLASSIFICATION_METRICS, recall_at_k

__all__ = ["compare_results", "metric_inputs", "COMPARE_METHODS"]

COMPARE_METHODS = ("paired", "paper")


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


def _paired_test(metric: str, fn: Callable[..., float], arrays_a: tuple, arrays_b: tuple,
                 n_resamples: int, seed: int) -> dict:
    """The valid paired test for one metric plus the paired-bootstrap CI of the difference."""
    boot = paired_bootstrap_diff(fn, arrays_a, arrays_b, n_resamples=n_resamples, seed=seed)
    if metric == "accuracy":
        test = mcnemar_exact(arrays_a[0] == arrays_a[1], arrays_b[0] == arrays_b[1])
    elif fn is np.mean and all(np.isin(x[0], (0.0, 1.0)).all() for x in (arrays_a, arrays_b)):
        test = mcnemar_exact(arrays_a[0], arrays_b[0])
    elif fn is np.mean:
        test = paired_permutation_test(arrays_a[0], arrays_b[0], n_resamples=max(n_resamples, 1000),
                                       seed=seed)
    else:
        test = {"test": "paired-bootstrap", "pvalue": boot["pvalue"]}
    return {**test, "p_value": test["pvalue"], "diff": boot["diff"], "mean_difference": boot["diff"],
            "low": boot["low"], "high": boot["high"]}


def compare_results(a: dict, b: dict, n_resamples: int = 1000, seed: int = 0,
                    method: str = "paired") -> dict[str, dict]:
    """Two-sided paired tests of model ``a`` vs ``b`` for every metric the two results share."""
    if method not in COMPARE_METHODS:
        raise ValueError(f"compare method must be one of {COMPARE_METHODS}, got {method!r}")
    if a["task"] != b["task"]:
        raise ValueError(f"cannot compare task {a['task']!r} with {b['task']!r}")
    out: dict[str, dict] = {}
    if a["task"] == "few_shot":
        if a["details"].get("seeds") != b["details"].get("seeds"):
            raise ValueError(f"few-shot seeds differ ({a['details'].get('seeds')} vs "
                             f"{b['details'].get('seeds')}); per-seed results are not paired")
        for k, seeds_a in a["per_sample"]["per_seed"].items():
            seeds_b = b["per_sample"]["per_seed"].get(k)
            if seeds_b is None:
                continue
            for m in seeds_a:
                res = paired_permutation_test(seeds_a[m], seeds_b[m], n_resamples=max(n_resamples, 10000),
                                              seed=seed)
                out[f"{m}@{k}shot"] = {**res, "p_value": res["pvalue"], "mean_difference": res["diff"]}
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
        if method == "paper":
            out[metric] = wilcoxon_paired_bootstrap(fa, arrays_a, arrays_b, n_resamples=n_resamples,
                                                    seed=seed)
        else:
            out[metric] = _paired_test(metric, fa, arrays_a, arrays_b, n_resamples, seed)
    return out
