"""The benchmark tasks, one function each, on features (numpy arrays) rather than on models.

Each returns a JSON-ready dict: ``metrics`` (name -> {value, low, high, n}, 95% percentile
bootstrap over samples or a t-interval over few-shot seeds), ``per_sample`` (the per-sample
outcomes that paired tests between models need) and ``details``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from openmusk.eval.metrics import (CLASSIFICATION_METRICS, image_retrieval_outcomes, recall_at_k,
                                   retrieval_ranks)
from openmusk.core.stats import bootstrap_ci, mean_ci

__all__ = ["zero_shot_classification", "cross_modal_retrieval",
           "image_retrieval", "linear_probe", "few_shot", "knn_probe", "classification_result",
           "DEFAULT_C_GRID"]

DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-6, 6, 7))


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def classification_result(task: str, y_true: Sequence[int], y_pred: Sequence[int],
                          n_resamples: int = 1000, seed: int = 0, **details) -> dict:
    """Accuracy, balanced accuracy and weighted F1 with bootstrap CIs, plus the predictions."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    metrics = {k: bootstrap_ci(f, t, p, n_resamples=n_resamples, seed=seed).to_dict()
               for k, f in CLASSIFICATION_METRICS.items()}
    return {"task": task, "metrics": metrics,
            "per_sample": {"y_true": t.tolist(), "y_pred": p.tolist()}, "details": details}


def zero_shot_classification(image_features: np.ndarray, labels: Sequence[int],
                             class_weights: np.ndarray, n_resamples: int = 1000,
                             seed: int = 0) -> dict:
    """Predict the class whose prompt-ensemble embedding is most similar to each image."""
    logits = _l2(image_features) @ np.asarray(class_weights, dtype=np.float64).T
    return classification_result("zeroshot", labels, logits.argmax(1), n_resamples, seed,
                                 n_classes=int(len(class_weights)))


def cross_modal_retrieval(image_features: np.ndarray, text_features: np.ndarray,
                          text_to_image: Sequence[int], ks: Sequence[int] = (1, 10, 50),
                          n_resamples: int = 1000, seed: int = 0) -> dict:
    """Image->text and text->image Recall@k; ``text_to_image[j]`` is the image of caption j."""
    img, txt = _l2(image_features), _l2(text_features)
    t2i_groups = np.asarray(text_to_image, dtype=np.int64)
    if len(t2i_groups) != len(txt):
        raise ValueError(f"retrieval: {len(txt)} captions but {len(t2i_groups)} caption->image ids")
    if t2i_groups.min() < 0 or t2i_groups.max() >= len(img):
        raise ValueError(f"retrieval: caption->image ids must lie in 0..{len(img) - 1}")
    img_groups = np.arange(len(img))
    ranks = {"i2t": retrieval_ranks(img, txt, img_groups, t2i_groups),
             "t2i": retrieval_ranks(txt, img, t2i_groups, img_groups)}
    metrics = {}
    for direction, r in ranks.items():
        for k in ks:
            metrics[f"{direction}_R@{k}"] = bootstrap_ci(np.mean, recall_at_k(r, k),
                                                         n_resamples=n_resamples, seed=seed).to_dict()
    return {"task": "retrieval", "metrics": metrics,
            "per_sample": {"i2t_rank": ranks["i2t"].tolist(), "t2i_rank": ranks["t2i"].tolist()},
            "details": {"n_images": int(len(img)), "n_texts": int(len(txt)), "ks": list(ks)}}


def image_retrieval(features: np.ndarray, labels: Sequence[int], ks: Sequence[int] = (1, 3, 5),
                    n_resamples: int = 1000, seed: int = 0) -> dict:
    """Image->image retrieval among the set itself: Acc@k, mMV@k, mAP@k per query, with CIs."""
    outcomes = image_retrieval_outcomes(features, labels, ks)
    metrics = {k: bootstrap_ci(np.mean, v, n_resamples=n_resamples, seed=seed).to_dict()
               for k, v in outcomes.items()}
    return {"task": "image_retrieval", "metrics": metrics,
            "per_sample": {k: v.tolist() for k, v in outcomes.items()},
            "details": {"n_images": int(len(labels)), "ks": list(ks)}}


def _logreg(C: float, seed: int, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, random_state=seed)


def _select_C(train_x, train_y, val_x, val_y, grid: Sequence[float], refine: int, seed: int,
              max_iter: int) -> tuple[float, dict[float, float]]:
    """Coarse log-grid then bisection in log space around the best C, scored on validation."""
    from sklearn.metrics import balanced_accuracy_score

    scores: dict[float, float] = {}

    def score(c: float) -> float:
        if c not in scores:
            clf = _logreg(c, seed, max_iter).fit(train_x, train_y)
            scores[c] = float(balanced_accuracy_score(val_y, clf.predict(val_x)))
        return scores[c]

    for c in grid:
        score(c)
    best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
    step = (np.log10(grid[1]) - np.log10(grid[0])) / 2 if len(grid) > 1 else 1.0
    for _ in range(refine):
        for c in (best * 10 ** -step, best * 10 ** step):
            score(float(c))
        best = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
        step /= 2
    return best, scores


def linear_probe(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray,
                 test_y: Sequence[int], val_x: np.ndarray | None = None,
                 val_y: Sequence[int] | None = None, C_grid: Sequence[float] = DEFAULT_C_GRID,
                 refine: int = 2, val_fraction: float = 0.2, max_iter: int = 1000,
                 n_resamples: int = 1000, seed: int = 0) -> dict:
    """Logistic regression (scikit-learn) with C chosen on a validation split, then refit on
    train + validation and scored on test, as CLIP_benchmark's linear probe does."""
    from sklearn.model_selection import train_test_split

    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    if val_x is None:
        counts = np.bincount(train_y)
        strat = train_y if counts[counts > 0].min() >= 2 else None
        tr_x, val_x, tr_y, val_y = train_test_split(train_x, train_y, test_size=val_fraction,
                                                    random_state=seed, stratify=strat)
    else:
        tr_x, tr_y = train_x, train_y
    best, scores = _select_C(tr_x, tr_y, np.asarray(val_x), np.asarray(val_y), C_grid, refine,
                             seed, max_iter)
    all_x = np.concatenate([tr_x, val_x])
    all_y = np.concatenate([tr_y, val_y])
    clf = _logreg(best, seed, max_iter).fit(all_x, all_y)
    return classification_result("linear_probe", test_y, clf.predict(test_x), n_resamples, seed,
                                 C=best, val_scores={f"{c:.3g}": s for c, s in sorted(scores.items())},
                                 n_train=int(len(all_y)))


def _sample_k_per_class(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < k:
            raise ValueError(f"few-shot: class {int(c)} has {len(members)} training items, fewer than k={k}")
        idx.append(rng.choice(members, size=k, replace=False))
    return np.concatenate(idx)


def few_shot(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, test_y: Sequence[int],
             shots: Sequence[int] = (1, 2, 4, 8, 10), seeds: Sequence[int] = tuple(range(10)),
             C: float = 1.0, max_iter: int = 1000) -> dict:
    """k-shot linear probes: per k and seed, k training items per class; mean and 95% CI over seeds.

    Shots for which some class has fewer than k training items are skipped and listed.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    train_x, train_y, test_y = np.asarray(train_x), np.asarray(train_y), np.asarray(test_y)
    per_seed: dict[str, dict[str, list[float]]] = {}
    metrics, skipped = {}, []
    min_count = int(np.bincount(train_y)[np.unique(train_y)].min())
    for k in shots:
        if k > min_count:
            skipped.append(int(k))
            continue
        bal, acc = [], []
        for s in seeds:
            idx = _sample_k_per_class(train_y, k, np.random.default_rng(s))
            pred = _logreg(C, s, max_iter).fit(train_x[idx], train_y[idx]).predict(test_x)
            bal.append(float(balanced_accuracy_score(test_y, pred)))
            acc.append(float(accuracy_score(test_y, pred)))
        per_seed[str(k)] = {"balanced_accuracy": bal, "accuracy": acc}
        metrics[f"balanced_accuracy@{k}shot"] = mean_ci(bal, bounds=(0.0, 1.0)).to_dict()
        metrics[f"accuracy@{k}shot"] = mean_ci(acc, bounds=(0.0, 1.0)).to_dict()
    if not metrics:
        raise ValueError(f"few-shot: every class needs at least min(shots)={min(shots)} training items; "
                         f"the smallest class has {min_count}")
    return {"task": "few_shot", "metrics": metrics, "per_sample": {"per_seed": per_seed},
            "details": {"shots": [int(k) for k in shots if k not in skipped], "skipped_shots": skipped,
                        "seeds": [int(s) for s in seeds], "C": C}}


def knn_probe(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray,
              test_y: Sequence[int], k: int = 20, n_resamples: int = 1000, seed: int = 0) -> dict:
    """k-nearest-neighbour classification (Euclidean on L2-normalised features, majority vote)."""
    from sklearn.neighbors import KNeighborsClassifier

    tx = _l2(train_x)
    k_eff = min(k, len(tx))
    clf = KNeighborsClassifier(n_neighbors=k_eff, metric="euclidean").fit(tx, np.asarray(train_y))
    return classification_result("knn", test_y, clf.predict(_l2(test_x)), n_resamples, seed, k=k_eff)
