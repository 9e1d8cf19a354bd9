"""Metrics against hand-worked cases (with ties), brute-force loops, scikit-learn and scipy."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score

from openmusk.eval.metrics import (label_metrics, image_retrieval_outcomes,
                                   nearest_neighbors, recall_at_k, retrieval_ranks)
from openmusk.core.stats import bootstrap_ci


def test_label_metrics_match_brute_force_loops():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, 300))
    m = label_metrics(y, p)
    recalls, f1s, supports = [], [], []
    for c in range(4):
        tp = sum(1 for a, b in zip(y, p) if a == c and b == c)
        fp = sum(1 for a, b in zip(y, p) if a != c and b == c)
        fn = sum(1 for a, b in zip(y, p) if a == c and b != c)
        recalls.append(tp / (tp + fn))
        prec = tp / (tp + fp) if tp + fp else 0.0
        f1s.append(2 * prec * recalls[-1] / (prec + recalls[-1]) if prec + recalls[-1] else 0.0)
        supports.append(tp + fn)
    assert m["accuracy"] == pytest.approx(sum(a == b for a, b in zip(y, p)) / len(y))
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert m["weighted_f1"] == pytest.approx(np.average(f1s, weights=supports))


def test_cross_modal_ranks_hand_worked_with_ties():
    # images 0 and 2 are identical, so text 0 ties between them; caption 3 also belongs to image 1
    img = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    t2i = np.array([0, 1, 2, 1])
    # text->image: a tie with a wrong image counts against the query
    assert retrieval_ranks(txt, img, t2i, np.arange(3)).tolist() == [1, 0, 2, 2]
    # image->text: the best of an image's captions counts
    assert retrieval_ranks(img, txt, np.arange(3), t2i).tolist() == [0, 0, 2]
    assert recall_at_k([1, 0, 2, 2], 1).mean() == pytest.approx(1 / 4)
    assert recall_at_k([1, 0, 2, 2], 2).mean() == pytest.approx(2 / 4)


def test_cross_modal_ranks_match_brute_force_and_chunking():
    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(37, 8)), rng.normal(size=(53, 8))
    t2i = rng.integers(0, 37, 53)
    t2i[:37] = np.arange(37)  # every image has a caption
    ranks = retrieval_ranks(txt, img, t2i, np.arange(37), chunk=5)
    ref = []
    for j in range(53):
        s = img @ txt[j]
        ref.append(int(np.sum(np.delete(s, t2i[j]) >= s[t2i[j]])))
    assert ranks.tolist() == ref
    ranks_i = retrieval_ranks(img, txt, np.arange(37), t2i, chunk=4)
    for i in range(37):
        s = txt @ img[i]
        best = s[t2i == i].max()
        assert ranks_i[i] == int(np.sum(s[t2i != i] >= best))


def test_retrieval_without_a_correct_item_names_the_query():
    with pytest.raises(ValueError, match="query 1 has no correct item"):
        retrieval_ranks(np.eye(2), np.eye(2), [0, 5], [0, 1])


def test_image_retrieval_hand_worked_with_ties():
    x = np.array([[0.0], [1.0], [1.0], [3.0], [4.0]])
    y = np.array([0, 0, 1, 1, 0])
    # equal distances: lower index first (item 0 sees 1 before 2)
    assert nearest_neighbors(x, 4).tolist() == [[1, 2, 3, 4], [2, 0, 3, 4], [1, 0, 3, 4],
                                                 [4, 1, 2, 0], [3, 1, 2, 0]]
    out = image_retrieval_outcomes(x, y, ks=(1, 2, 3))
    assert out["acc@1"].tolist() == [1, 0, 0, 0, 0]
    assert out["acc@3"].tolist() == [1, 1, 1, 1, 1]
    assert out["mmv@2"].tolist() == [1, 1, 0, 0, 1]  # tied votes go to the lower class
    assert out["mmv@3"].tolist() == [0, 0, 0, 0, 0]
    assert out["map@3"] == pytest.approx([0.5, 0.25, 1 / 3, 1 / 3, 0.25])


def test_image_retrieval_matches_loops_and_sklearn_average_precision():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    n = len(x)
    out = image_retrieval_outcomes(x, y, ks=(1, 5, n - 1), chunk=7)
    for i in range(n):
        d = np.linalg.norm(x - x[i], axis=1)
        d[i] = np.inf
        order = np.argsort(d, kind="stable")[: n - 1]
        top5 = y[order[:5]]
        assert out["acc@5"][i] == float((top5 == y[i]).any())
        assert out["mmv@5"][i] == float(np.bincount(top5, minlength=3).argmax() == y[i])
        mask = np.arange(n) != i
        ap = average_precision_score(y[mask] == y[i], -d[mask])
        assert out[f"map@{n - 1}"][i] == pytest.approx(ap)


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    hits = (rng.random(400) < 0.7).astype(float)
    ours = bootstrap_ci(np.mean, hits, n_resamples=2000, seed=0)
    ref = stats.bootstrap((hits,), np.mean, n_resamples=2000, method="percentile",
                          confidence_level=0.95, random_state=0).confidence_interval
    assert ours.value == pytest.approx(hits.mean())
    assert ours.low == pytest.approx(ref.low, abs=0.01)
    assert ours.high == pytest.approx(ref.high, abs=0.01)


def test_label_metrics_match_sklearn_on_uneven_labels():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(4)
    for trial in range(20):
        y = rng.integers(0, 5, 40)
        p = rng.integers(0, 6, 40)  # predicts a class (5) absent from y_true
        m = label_metrics(y, p)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns about the extra predicted class
            bal = balanced_accuracy_score(y, p)
        assert m["balanced_accuracy"] == pytest.approx(bal)
        assert m["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0))



def test_nearest_neighbors_with_many_exact_ties_match_a_stable_sort_loop():
    x = np.random.default_rng(5).integers(0, 3, size=(80, 2)).astype(np.float32)  # 9 distinct points
    nn = nearest_neighbors(x, 7, chunk=9)
    for i in range(len(x)):
        d = ((x - x[i]) ** 2).sum(1)
        d[i] = np.inf
        assert nn[i].tolist() == np.argsort(d, kind="stable")[:7].tolist()
