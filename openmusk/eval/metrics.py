"""Per-sample metric arrays for classification and retrieval, computed in chunks.

Every function returns per-query (or per-sample) outcomes so that the same arrays feed the point
estimate, the bootstrap confidence interval and the paired tests between models.

Tie conventions (stated once, tested on a hand-worked case):
* cross-modal Recall@k: the rank of a query is the number of *wrong* gallery items scoring at
  least as high as its best correct item (ties count against the query); a hit at k is rank < k.
* image-to-image retrieval: neighbours are ordered by Euclidean distance, equal distances by the
  lower dataset index; the query itself is excluded. mMV@k breaks a tied vote in favour of the
  lower class index (as ``argmax`` over class counts does in the MUSK benchmark code).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["label_metrics", "CLASSIFICATION_METRICS", "retrieval_ranks", "recall_at_k",
           "nearest_neighbors", "image_retrieval_outcomes"]


def _confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Confusion counts (true class x predicted class) over the union of the labels seen, as
    scikit-learn does (so a label such as -1 is its own class, never another class's cell)."""
    t, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if len(t) != len(p):
        raise ValueError(f"metrics: {len(t)} true labels but {len(p)} predictions")
    _, inv = np.unique(np.concatenate([t, p]), return_inverse=True)
    n = int(inv.max(initial=0)) + 1
    return np.bincount(inv[:len(t)] * n + inv[len(t):], minlength=n * n).reshape(n, n)


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    cm = _confusion(y_true, y_pred)
    support = cm.sum(1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Per-class F1 averaged with weights = true support (F1 of an empty class is 0)."""
    cm = _confusion(y_true, y_pred)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    support = cm.sum(1)
    return float(np.sum(f1 * support) / support.sum())


CLASSIFICATION_METRICS = {"accuracy": _accuracy, "balanced_accuracy": _balanced_accuracy,
                          "weighted_f1": _weighted_f1}


def label_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall) and support-weighted F1 of predicted
    labels, as point values (the bootstrapped version is :func:`openmusk.eval.tasks.classification_result`)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return {k: f(t, p) for k, f in CLASSIFICATION_METRICS.items()}


def _as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dtype)


@torch.no_grad()
def retrieval_ranks(queries: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor,
                    query_groups: Sequence[int], gallery_groups: Sequence[int],
                    chunk: int = 1024) -> np.ndarray:
    """Rank of the best correct gallery item for every query (0 = first), by dot product.

    A gallery item is correct for a query when their group ids match (e.g. the image index a
    caption belongs to). Only a ``chunk x len(gallery)`` block of scores exists at a time.
    """
    q, g = _as_tensor(queries), _as_tensor(gallery)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"retrieval: queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be "
                         "(n, d) with the same d")
    qg = torch.as_tensor(np.asarray(query_groups), dtype=torch.long)
    gg = torch.as_tensor(np.asarray(gallery_groups), dtype=torch.long)
    if len(qg) != len(q) or len(gg) != len(g):
        raise ValueError("retrieval: one group id per query and per gallery item is required")
    ranks = torch.empty(len(q), dtype=torch.long)
    for s in range(0, len(q), chunk):
        scores = q[s:s + chunk] @ g.T
        correct = qg[s:s + chunk, None] == gg[None, :]
        if not bool(correct.any(1).all()):
            bad = s + int((~correct.any(1)).nonzero()[0, 0])
            raise ValueError(f"retrieval: query {bad} has no correct item in the gallery")
        best = scores.masked_fill(~correct, float("-inf")).amax(1, keepdim=True)
        ranks[s:s + chunk] = ((scores >= best) & ~correct).sum(1)
    return ranks.numpy()


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query hits (1.0 if the correct item is within the first k)."""
    return (np.asarray(ranks) < k).astype(np.float64)


@torch.no_grad()
def nearest_neighbors(features: np.ndarray | torch.Tensor, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of the k nearest other items (Euclidean), ties by lower index; (n, k).

    Distances are computed in float64: in float32 the expansion |a|^2 + |b|^2 - 2ab loses the
    small differences between raw-scale (unnormalised) features and misorders neighbours.
    """
    x = _as_tensor(features, torch.float64)
    n = len(x)
    if k >= n:
        raise ValueError(f"image retrieval: k={k} needs more than {n} items")
    sq = (x * x).sum(1)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, chunk):
        d = sq[s:s + chunk, None] + sq[None, :] - 2.0 * (x[s:s + chunk] @ x.T)
        rows = torch.arange(s, min(s + chunk, n))
        d[rows - s, rows] = float("inf")
        # candidates: everything within the k-th smallest distance (k of them unless there are ties)
        kth = torch.topk(d, k, dim=1, largest=False).values[:, -1:]
        r, c = (d <= kth).nonzero(as_tuple=True)  # row-major, columns ascending within a row
        by_dist = torch.sort(d[r, c], stable=True).indices
        order = by_dist[torch.sort(r[by_dist], stable=True).indices]  # by row, distance, index
        counts = torch.bincount(r, minlength=len(rows))
        starts = counts.cumsum(0) - counts
        out[s:s + chunk] = c[order][starts[:, None] + torch.arange(k)].numpy()
    return out


def image_retrieval_outcomes(features: np.ndarray | torch.Tensor, labels: Sequence[int],
                             ks: Sequence[int] = (1, 3, 5), chunk: int = 1024) -> dict[str, np.ndarray]:
    """Per-query Acc@k (a same-class item in the top k), mMV@k (majority vote of the top k is
    right) and AP@k (average precision over the top k, normalised by min(k, #same-class items))."""
    y = np.asarray(labels, dtype=np.int64)
    kmax = max(ks)
    nn = nearest_neighbors(features, kmax, chunk=chunk)
    rel = (y[nn] == y[:, None]).astype(np.float64)  # (n, kmax)
    n_rel = np.bincount(y)[y] - 1
    n_cls = int(y.max()) + 1
    out: dict[str, np.ndarray] = {}
    prec = np.cumsum(rel, 1) / np.arange(1, kmax + 1)
    for k in ks:
        out[f"acc@{k}"] = rel[:, :k].max(1)
        counts = np.zeros((len(y), n_cls), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(y)), k), y[nn[:, :k]].ravel()), 1)
        out[f"mmv@{k}"] = (counts.argmax(1) == y).astype(np.float64)
        denom = np.minimum(k, n_rel)
        ap = (prec[:, :k] * rel[:, :k]).sum(1)
        out[f"map@{k}"] = np.divide(ap, denom, out=np.zeros_like(ap), where=denom > 0)
    return out
