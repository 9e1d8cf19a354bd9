"""Tasks on features with known structure: probes learn, few-shot improves with k, controls stay
at chance, zero-shot and retrieval agree with brute-force computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from openmusk.encoders import CallableEncoder, zero_shot_weights
from openmusk.eval.tasks import (cross_modal_retrieval, few_shot, image_retrieval, knn_probe,
                                 linear_probe, zero_shot_classification)


def clusters(n_per_class: int, n_classes: int = 4, dim: int = 32, spread: float = 1.0, seed: int = 0):
    """Gaussian clusters around random unit-norm-ish centres: structure a probe can learn."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 1.5
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


def test_linear_probe_and_knn_beat_chance_and_shuffled_labels_do_not():
    x, y = clusters(160, seed=0)
    xtr, ytr, xte, yte = x[:240], y[:240], x[240:], y[240:]
    lp = linear_probe(xtr, ytr, xte, yte, n_resamples=200)
    kn = knn_probe(xtr, ytr, xte, yte, k=15, n_resamples=200)
    assert lp["metrics"]["balanced_accuracy"]["value"] > 0.9  # chance is 0.25
    assert kn["metrics"]["balanced_accuracy"]["value"] > 0.9
    assert max(lp["details"]["val_scores"].values()) > 0.9
    # the reported metric is the metric of the stored predictions
    assert lp["metrics"]["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(lp["per_sample"]["y_true"], lp["per_sample"]["y_pred"]))
    lo, hi = lp["metrics"]["balanced_accuracy"]["low"], lp["metrics"]["balanced_accuracy"]["high"]
    assert lo <= lp["metrics"]["balanced_accuracy"]["value"] <= hi
    # control: labels shuffled on the training side carry no information
    shuffled = np.random.default_rng(5).permutation(ytr)
    lp0 = linear_probe(xtr, shuffled, xte, yte, n_resamples=200)
    kn0 = knn_probe(xtr, shuffled, xte, yte, k=15, n_resamples=200)
    for r in (lp0, kn0):
        assert abs(r["metrics"]["balanced_accuracy"]["value"] - 0.25) < 0.12


def test_few_shot_rises_with_k_and_reports_seed_intervals():
    x, y = clusters(220, n_classes=3, dim=64, spread=3.0, seed=1)
    xtr, ytr, xte, yte = x[:360], y[:360], x[360:], y[360:]
    r = few_shot(xtr, ytr, xte, yte, shots=(1, 2, 4, 8, 10, 500), seeds=range(6))
    m = {k: r["metrics"][f"balanced_accuracy@{k}shot"]["value"] for k in (1, 2, 4, 8, 10)}
    assert m[10] > m[1] + 0.1
    assert m[8] > m[2]
    assert r["details"]["skipped_shots"] == [500]  # no class has 500 training items
    seeds_10 = r["per_sample"]["per_seed"]["10"]["balanced_accuracy"]
    assert len(seeds_10) == 6
    assert r["metrics"]["balanced_accuracy@10shot"]["value"] == pytest.approx(np.mean(seeds_10))
    from scipy import stats
    half = stats.t.ppf(0.975, 5) * np.std(seeds_10, ddof=1) / np.sqrt(6)
    assert r["metrics"]["balanced_accuracy@10shot"]["high"] == pytest.approx(np.mean(seeds_10) + half)


def test_knn_matches_a_brute_force_majority_vote():
    x, y = clusters(30, n_classes=2, dim=8, spread=2.5, seed=2)
    xtr, ytr, xte, yte = x[:40], y[:40], x[40:], y[40:]
    r = knn_probe(xtr, ytr, xte, yte, k=5, n_resamples=50)
    ntr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    nte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    ref = []
    for q in nte:
        nn = np.argsort(np.linalg.norm(ntr - q, axis=1), kind="stable")[:5]
        ref.append(int(np.bincount(ytr[nn], minlength=2).argmax()))
    assert r["per_sample"]["y_pred"] == ref


def _text_encoder(classes):
    """Texts map to the one-hot of the class they name plus a template-dependent offset."""
    dim = len(classes) + 2

    def text_fn(texts):
        out = torch.zeros(len(texts), dim)
        for i, t in enumerate(texts):
            for j, c in enumerate(classes):
                if c in t:
                    out[i, j] = 1.0
            out[i, -1] = 0.3 if t.startswith("a ") else -0.3
        return out

    return CallableEncoder("toy", image_fn=lambda x: x, transform=None, text_fn=text_fn)


def test_zero_shot_prompt_ensemble_and_prediction_match_a_loop():
    classes = ["tumour", "stroma", "fat"]
    enc = _text_encoder(classes)
    w = zero_shot_weights(enc, classes, ["a photo of {c}", "the {c}"])
    # the template offsets cancel in the ensemble mean: each class weight is its one-hot
    assert np.allclose(w[:, :3], np.eye(3), atol=1e-6) and np.allclose(w[:, 3:], 0, atol=1e-6)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    img = np.eye(5)[y] + 0.6 * rng.normal(size=(90, 5))
    r = zero_shot_classification(img, y, w, n_resamples=100)
    ref = [int(np.argmax([np.dot(v / np.linalg.norm(v), c) for c in w])) for v in img]
    assert r["per_sample"]["y_pred"] == ref
    assert r["metrics"]["accuracy"]["value"] == pytest.approx(np.mean(np.array(ref) == y))
    assert r["metrics"]["accuracy"]["value"] > 0.6


def test_cross_modal_and_image_retrieval_results():
    rng = np.random.default_rng(4)
    img = rng.normal(size=(50, 16))
    txt = img + 0.5 * rng.normal(size=(50, 16))  # caption j describes image j
    r = cross_modal_retrieval(img, txt, np.arange(50), ks=(1, 5), n_resamples=100)
    assert r["metrics"]["t2i_R@1"]["value"] > 0.8
    ranks = np.array(r["per_sample"]["t2i_rank"])
    assert r["metrics"]["t2i_R@5"]["value"] == pytest.approx(np.mean(ranks < 5))
    shuffled = cross_modal_retrieval(img, txt, rng.permutation(50), ks=(1, 5), n_resamples=100)
    assert shuffled["metrics"]["t2i_R@5"]["value"] < 0.3  # chance is 5/50
    with pytest.raises(ValueError, match="caption->image ids"):
        cross_modal_retrieval(img, txt, np.arange(1, 51))
    x, y = clusters(20, n_classes=3, dim=8, seed=3)
    ir = image_retrieval(x, y, ks=(1, 5), n_resamples=100)
    assert ir["metrics"]["mmv@5"]["value"] > 0.9
    assert set(ir["metrics"]) == {"acc@1", "mmv@1", "map@1", "acc@5", "mmv@5", "map@5"}
