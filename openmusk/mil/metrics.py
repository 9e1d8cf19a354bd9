"""Slide-level metrics and statistics: AUC with bootstrap CI, specificity at fixed sensitivity,
balanced accuracy, Harrell's and Uno's c-index, Kaplan-Meier risk groups with log-rank test and
hazard ratio, multivariable Cox regression (lifelines) and fold-wise model comparison.

Conventions: ``risk`` is higher for earlier events; ``events`` is 1 for an observed event, 0 for
censoring. The AUC and c-indexes are computed here with numpy (checked in the tests against
scikit-learn, lifelines and scikit-survival); Kaplan-Meier, log-rank and Cox fits use lifelines.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy.stats import rankdata

from openmusk.core.stats import Estimate, bootstrap_ci, mann_whitney, paired_permutation_test

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["roc_auc", "auc_ci", "specificity_at_sensitivity", "balanced_accuracy", "harrell_c",
           "uno_c", "censoring_survival", "km_risk_groups", "cox_multivariable",
           "classification_metrics", "survival_metrics", "compare_models"]


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic: P(score_pos > score_neg) + 0.5 P(tie)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = rankdata(np.asarray(s, float))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(labels: Sequence[int], scores: np.ndarray) -> float:
    """Binary AUC (scores (N,) or (N, 2)) or macro one-vs-rest AUC for (N, C) class scores.

    Binary labels may be any two values; the larger one is the positive class, as in scikit-learn
    (labels {1, 2}: 2 is positive). Multi-class labels must be 0..C-1, one per score column.
    """
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, float)
    if not np.isfinite(s).all():
        raise ValueError(f"AUC: {int((~np.isfinite(s)).sum())} NaN or infinite scores")
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    present = np.unique(y)
    if s.ndim == 1:
        if len(present) > 2:
            raise ValueError(f"binary AUC got {len(present)} labels {present.tolist()}; give (N, C) scores")
        return _binary_auc(y == present[-1], s) if len(present) == 2 else _binary_auc(y == 1, s)
    if not np.array_equal(present, np.arange(s.shape[1])):
        raise ValueError(f"multi-class AUC needs every one of the {s.shape[1]} classes 0..{s.shape[1] - 1} "
                         f"present, got {present.tolist()}")
    return float(np.mean([_binary_auc(y == c, s[:, c]) for c in range(s.shape[1])]))


def auc_ci(labels: Sequence[int], scores: np.ndarray, n_resamples: int = 1000,
           seed: int = 0) -> Estimate:
    """AUC with a stratified percentile-bootstrap 95% CI (classes kept in proportion)."""
    y = np.asarray(labels).astype(int)
    return bootstrap_ci(roc_auc, y, np.asarray(scores, float), n_resamples=n_resamples, seed=seed,
                        stratify=y)


def specificity_at_sensitivity(labels: Sequence[int], scores: np.ndarray,
                               sensitivity: float = 0.9) -> float:
    """Best specificity over thresholds whose sensitivity is at least ``sensitivity``.

    A case is called positive when its score >= threshold; thresholds run over the observed scores.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, float)
    if s.ndim == 2:
        s = s[:, 1]
    if y.all() or not y.any():
        raise ValueError("specificity at sensitivity needs both classes")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    sens = tp / y.sum()
    spec = 1 - fp / (~y).sum()
    ok = sens >= sensitivity - 1e-12
    return float(spec[ok].max())


def balanced_accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    y, p = np.asarray(labels), np.asarray(predictions)
    return float(np.mean([(p[y == c] == c).mean() for c in np.unique(y)]))


def _concordance(times: np.ndarray, events: np.ndarray, risk: np.ndarray,
                 weights: np.ndarray, tied_tol: float = 1e-8) -> float:
    """Weighted concordance over comparable pairs (i had the event, j outlived i or was censored
    at the same time); a pair with tied risk counts one half. Weight w_i of the earlier case."""
    times, risk = np.asarray(times, float), np.asarray(risk, float)
    events = np.asarray(events).astype(bool)
    num = den = 0.0
    for start in range(0, len(times), 1024):  # blocks of rows keep memory at 1024 x N
        rows = np.arange(start, min(start + 1024, len(times)))
        rows = rows[events[rows]]
        if len(rows) == 0:
            continue
        ti, ri = times[rows, None], risk[rows, None]
        comparable = (times[None, :] > ti) | ((times[None, :] == ti) & ~events[None, :])
        diff = ri - risk[None, :]
        score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float))
        w = weights[rows, None]
        num += float((w * score * comparable).sum())
        den += float((w * comparable).sum())
    if den == 0:
        raise ValueError("c-index: no comparable pairs (no events, or all events at the last time)")
    return num / den


def _check_survival(times: Sequence[float], events: Sequence[int], risk: Sequence[float],
                    what: str) -> None:
    """Refuse NaN/infinite times or risks (a NaN risk would count as a discordant pair, as a
    diverged model's output silently would) and mismatched lengths, as scikit-survival does."""
    t, r = np.asarray(times, float), np.asarray(risk, float)
    if not (len(t) == len(r) == len(np.asarray(events))):
        raise ValueError(f"{what}: times, events and risk have lengths {len(t)}, "
                         f"{len(np.asarray(events))}, {len(r)}")
    for name, x in (("risk", r), ("times", t)):
        bad = np.flatnonzero(~np.isfinite(x))
        if len(bad):
            raise ValueError(f"{what}: {len(bad)} NaN or infinite {name} value(s) (rows "
                             f"{bad[:5].tolist()}{'...' if len(bad) > 5 else ''}); a diverged model? "
                             "drop or fix them before scoring")


def harrell_c(times: Sequence[float], events: Sequence[int], risk: Sequence[float]) -> float:
    """Harrell's concordance index of a risk score (higher risk = earlier event)."""
    _check_survival(times, events, risk, "Harrell's c-index")
    t = np.asarray(times, float)
    return _concordance(t, events, risk, np.ones(len(t)))


def censoring_survival(train_times: Sequence[float], train_events: Sequence[int]):
    """Kaplan-Meier estimate G(t) of the censoring distribution, as a step function of t.

    At tied times events are taken to precede censorings (the censoring risk set at t excludes
    the events at t), the usual convention for inverse-probability-of-censoring weights.
    """
    t = np.asarray(train_times, float)
    e = np.asarray(train_events).astype(bool)
    uniq = np.unique(t)
    n_at_risk = np.array([(t >= u).sum() for u in uniq], float)
    n_events = np.array([(e & (t == u)).sum() for u in uniq], float)
    n_cens = np.array([(~e & (t == u)).sum() for u in uniq], float)
    denom = n_at_risk - n_events
    ratio = np.divide(n_cens, denom, out=np.zeros_like(n_cens), where=n_cens > 0)
    g = np.cumprod(1 - ratio)

    def evaluate(x: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(uniq, np.asarray(x, float), side="right") - 1
        return np.where(idx >= 0, g[np.clip(idx, 0, None)], 1.0)

    return evaluate


def uno_c(train_times: Sequence[float], train_events: Sequence[int], times: Sequence[float],
          events: Sequence[int], risk: Sequence[float], tau: float | None = None) -> float:
    """Uno's IPCW c-index (robust to heavy censoring): pairs weighted by 1 / G(t_i)^2.

    G is the censoring survival estimated on the training set; ``tau`` truncates the comparison
    to test cases before tau (default: none). Without ``tau``, test times beyond the last training
    time are refused (G is unknown there), as scikit-survival's ``concordance_index_ipcw`` does.
    """
    _check_survival(times, events, risk, "Uno's c-index")
    _check_survival(train_times, train_events, np.zeros(len(np.asarray(train_times))),
                    "Uno's c-index (training set)")
    t = np.asarray(times, float)
    e = np.asarray(events).astype(bool)
    last = float(np.max(np.asarray(train_times, float)))
    if tau is None and t.max() > last:
        raise ValueError(f"Uno's c-index: test time {t.max():.6g} is beyond the last training time "
                         f"{last:.6g}; the censoring survival is unknown there; give tau <= {last:.6g}")
    g = censoring_survival(train_times, train_events)(t)
    keep = e & ((t < tau) if tau is not None else True)
    if np.any(g[keep] <= 0):
        raise ValueError("Uno's c-index: censoring survival is zero at some event time; "
                         "set tau below the last follow-up time of the training set")
    w = np.zeros(len(t))
    w[keep] = 1.0 / np.square(g[keep])
    return _concordance(t, e, risk, w)


def km_risk_groups(times: Sequence[float], events: Sequence[int], risk: Sequence[float],
                   threshold: float | None = None) -> dict:
    """Split at the median risk (or ``threshold``): Kaplan-Meier fits, log-rank test, hazard ratio.

    Returns the threshold, group sizes, log-rank statistic and p-value, the Cox hazard ratio of the
    high-risk group with its 95% CI, and the fitted ``KaplanMeierFitter`` objects for plotting.
    """
    from lifelines import CoxPHFitter, KaplanMeierFitter
    from lifelines.statistics import logrank_test
    import pandas as pd

    t, e, r = np.asarray(times, float), np.asarray(events).astype(int), np.asarray(risk, float)
    thr = float(np.median(r)) if threshold is None else float(threshold)
    high = r > thr
    if high.all() or not high.any():
        raise ValueError(f"risk split at {thr:.4g} puts everyone in one group")
    lr = logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high])
    cph = CoxPHFitter().fit(pd.DataFrame({"T": t, "E": e, "high_risk": high.astype(float)}), "T", "E")
    s = cph.summary.loc["high_risk"]
    kms = {name: KaplanMeierFitter(label=f"{name} risk (n={int(m.sum())})").fit(t[m], e[m])
           for name, m in (("high", high), ("low", ~high))}
    return {"threshold": thr, "n_high": int(high.sum()), "n_low": int((~high).sum()),
            "logrank_statistic": float(lr.test_statistic), "logrank_p": float(lr.p_value),
            "hazard_ratio": float(s["exp(coef)"]), "hr_low": float(s["exp(coef) lower 95%"]),
            "hr_high": float(s["exp(coef) upper 95%"]), "hr_p": float(s["p"]), "km": kms}


def cox_multivariable(times: Sequence[float], events: Sequence[int], risk: Sequence[float],
                      covariates: pd.DataFrame) -> dict:
    """Cox regression of the standardised risk score adjusted for clinical covariates.

    Categorical covariates are one-hot encoded (first level dropped). Returns per-term hazard
    ratio, 95% CI and p-value, and the model's concordance.
    """
    from lifelines import CoxPHFitter
    import pandas as pd

    r = np.asarray(risk, float)
    df = pd.get_dummies(covariates.reset_index(drop=True), drop_first=True, dtype=float)
    df.insert(0, "risk_score", (r - r.mean()) / (r.std() or 1.0))
    df["T"], df["E"] = np.asarray(times, float), np.asarray(events).astype(int)
    if df.isna().any().any():
        bad = df.columns[df.isna().any()].tolist()
        raise ValueError(f"Cox regression: missing values in covariates {bad}")
    cph = CoxPHFitter().fit(df, "T", "E")
    terms = {name: {"hazard_ratio": float(row["exp(coef)"]), "low": float(row["exp(coef) lower 95%"]),
                    "high": float(row["exp(coef) upper 95%"]), "p": float(row["p"])}
             for name, row in cph.summary.iterrows()}
    return {"terms": terms, "concordance": float(cph.concordance_index_)}


def classification_metrics(labels: Sequence[int], probs: np.ndarray, n_resamples: int = 1000,
                           seed: int = 0, sensitivity: float = 0.9) -> dict:
    """AUC with CI, balanced accuracy (argmax), and for binary tasks specificity at sensitivity."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, float)
    out: dict = {"n": int(len(y)), "balanced_accuracy": balanced_accuracy(y, p.argmax(1))}
    if len(np.unique(y)) < 2:
        return out
    out["auc"] = auc_ci(y, p, n_resamples=n_resamples, seed=seed).to_dict()
    if p.shape[1] == 2:
        out[f"specificity_at_{int(round(sensitivity * 100))}_sensitivity"] = \
            specificity_at_sensitivity(y, p[:, 1], sensitivity)
    return out


def survival_metrics(times: Sequence[float], events: Sequence[int], risk: Sequence[float],
                     train_times: Sequence[float] | None = None,
                     train_events: Sequence[int] | None = None, n_resamples: int = 1000,
                     seed: int = 0) -> dict:
    """Harrell's c-index with bootstrap CI, Uno's c-index (IPCW from the training set, truncated
    at its last event time), and the median-risk Kaplan-Meier split."""
    _check_survival(times, events, risk, "survival metrics")
    t, e, r = np.asarray(times, float), np.asarray(events).astype(int), np.asarray(risk, float)
    out: dict = {"n": int(len(t)), "events": int(e.sum())}
    if e.sum() == 0:
        return out
    out["c_index"] = bootstrap_ci(harrell_c, t, e, r, n_resamples=n_resamples, seed=seed,
                                  stratify=e).to_dict()
    tt = t if train_times is None else np.asarray(train_times, float)
    te = e if train_events is None else np.asarray(train_events).astype(int)
    tau = float(tt[te.astype(bool)].max()) if te.any() else None
    try:
        out["uno_c_index"] = uno_c(tt, te, t, e, r, tau=tau)
    except ValueError as err:
        out["uno_c_index_error"] = str(err)
    try:
        km = km_risk_groups(t, e, r)
        out["km_split"] = {k: v for k, v in km.items() if k != "km"}
    except ValueError as err:
        out["km_split_error"] = str(err)
    return out


def compare_models(fold_metric_a: Sequence[float], fold_metric_b: Sequence[float],
                   test: str = "paired-permutation") -> dict:
    """One metric of two models on the SAME cross-validation folds: an exact paired sign-flip test
    (default: the folds are paired), or ``test="mann-whitney"``, the unpaired U test of old reports."""
    if test == "mann-whitney":
        return mann_whitney(fold_metric_a, fold_metric_b)
    if test != "paired-permutation":
        raise ValueError(f"compare_models: test must be 'paired-permutation' or 'mann-whitney', got {test!r}")
    res = paired_permutation_test(fold_metric_a, fold_metric_b)
    return {"test": test, "diff": float(res["diff"]), "p_value": float(res["pvalue"])}
