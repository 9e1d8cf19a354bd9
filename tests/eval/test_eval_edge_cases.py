"""Edge cases of the patch-benchmark metrics, each against scikit-learn or brute force."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from openmusk.eval.metrics import label_metrics, nearest_neighbors


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_negative_predicted_label_is_its_own_class_like_sklearn() -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    t = np.array([0, 0, 1, 1, 2, 2, 2, 1, 0, 2])
    p = np.array([0, -1, 1, 1, 2, 2, -1, 1, 0, 2])
    got = label_metrics(t, p)
    assert got["weighted_f1"] == pytest.approx(f1_score(t, p, average="weighted"))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))
    assert got["accuracy"] == pytest.approx(accuracy_score(t, p))


def test_nearest_neighbors_exact_on_raw_scale_features() -> None:
    """Raw-scale features (large offset, small spread): float32 expansion misorders, ours does not."""
    rng = np.random.default_rng(0)
    x = 300.0 + rng.normal(0, 0.05, (200, 64))
    ref = np.argsort(cdist(x, x) + np.diag(np.full(200, np.inf)), axis=1, kind="stable")[:, :5]
    x32 = x.astype(np.float32).astype(np.float64)  # what a float32 feature file holds
    ref32 = np.argsort(cdist(x32, x32) + np.diag(np.full(200, np.inf)), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(nearest_neighbors(x32, 5), ref32)
    sq = (x32.astype(np.float32) ** 2).sum(1)  # the float32 expansion this replaced does misorder
    d32 = sq[:, None] + sq[None, :] - 2 * (x32.astype(np.float32) @ x32.astype(np.float32).T)
    np.fill_diagonal(d32, np.inf)
    assert (np.argsort(d32, axis=1, kind="stable")[:, :5] != ref32).any()
    assert (ref32 == ref).mean() > 0.9   # the float32 file itself barely moves the true order
