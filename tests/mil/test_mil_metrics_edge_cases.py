"""Edge cases of the slide-level metrics: refused clearly or computed as the reference library."""
from __future__ import annotations

import numpy as np
import pytest

from openmusk.mil.metrics import harrell_c, roc_auc, survival_metrics, uno_c


def _survival(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t = rng.exponential(10 * np.exp(-risk))
    return t, (rng.random(n) < 0.7).astype(int), risk + rng.normal(0, 0.5, n)


def test_nan_risk_is_refused_not_counted_discordant() -> None:
    t, e, r = _survival()
    r[[3, 7, 11]] = np.nan
    for fn in (lambda: harrell_c(t, e, r), lambda: uno_c(t, e, t, e, r, tau=float(t.max())),
               lambda: survival_metrics(t, e, r, n_resamples=10)):
        with pytest.raises(ValueError, match=r"3 NaN or infinite risk value\(s\) \(rows \[3, 7, 11\]"):
            fn()


def test_uno_c_without_tau_refuses_times_past_training_like_sksurv() -> None:
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    tt, te, _ = _survival(80, 1)
    t, e, r = _survival(40, 2)
    t = np.minimum(t, 0.9 * tt.max())
    t[0] = tt.max() + 5
    with pytest.raises(ValueError):
        concordance_index_ipcw(Surv.from_arrays(te, tt), Surv.from_arrays(e, t), r)
    with pytest.raises(ValueError, match="beyond the last training time"):
        uno_c(tt, te, t, e, r)
    t[0] = tt.max() / 2  # inside the training range: same number as scikit-survival
    ref = concordance_index_ipcw(Surv.from_arrays(te, tt), Surv.from_arrays(e, t), r)[0]
    assert uno_c(tt, te, t, e, r) == pytest.approx(ref, rel=1e-9)


def test_roc_auc_labels_one_two_takes_two_as_positive_like_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    y = np.array([1, 1, 2, 2, 1, 2])
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert roc_auc(y, s) == roc_auc_score(y, s) == 1.0
    assert roc_auc(y, np.stack([1 - s, s], 1)) == 1.0
    with pytest.raises(ValueError, match="0..2"):
        roc_auc(np.array([1, 2, 3, 1, 2, 3]), np.eye(3)[[0, 1, 2, 0, 1, 2]])
