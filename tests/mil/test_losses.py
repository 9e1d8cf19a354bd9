"""Survival losses against brute-force computations written from their definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openmusk.mil import losses


def test_nll_matches_brute_force_likelihood():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(7, 4)), dtype=torch.float32)
    bins = torch.tensor([0, 1, 2, 3, 3, 1, 0])
    events = torch.tensor([1, 0, 1, 0, 1, 1, 0])
    expected = []
    for i in range(7):
        h = [1 / (1 + math.exp(-float(v))) for v in logits[i]]
        y = int(bins[i])
        if events[i]:  # survived bins before y, died in y
            lik = math.prod(1 - h[j] for j in range(y)) * h[y]
        else:  # survived through bin y
            lik = math.prod(1 - h[j] for j in range(y + 1))
        expected.append(-math.log(lik))
    assert float(losses.nll_survival_loss(logits, bins, events)) == pytest.approx(np.mean(expected), rel=1e-5)
    # alpha re-weights: (1-a) * all + a * uncensored-only
    unc = np.mean([v if e else 0.0 for v, e in zip(expected, events.tolist())])
    got = float(losses.nll_survival_loss(logits, bins, events, alpha=0.4))
    assert got == pytest.approx(0.6 * np.mean(expected) + 0.4 * unc, rel=1e-5)


def test_cox_loss_matches_breslow_brute_force():
    rng = np.random.default_rng(1)
    risk = torch.tensor(rng.normal(size=9), dtype=torch.float32)
    times = torch.tensor([5.0, 3.0, 3.0, 8.0, 1.0, 3.0, 9.0, 5.0, 2.0])  # ties at 3 and 5
    events = torch.tensor([1, 1, 0, 1, 0, 1, 0, 1, 1])
    total, n_events = 0.0, 0
    for i in range(9):
        if events[i]:
            denom = sum(math.exp(float(risk[j])) for j in range(9) if times[j] >= times[i])
            total += -(float(risk[i]) - math.log(denom))
            n_events += 1
    assert float(losses.cox_loss(risk, times, events)) == pytest.approx(total / n_events, rel=1e-5)
    no_events = losses.cox_loss(risk.requires_grad_(), times, torch.zeros(9))
    assert no_events.item() == 0.0 and no_events.requires_grad


def test_time_bins_quantiles_and_assignment():
    times = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 20, 0.5])
    events = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    edges = losses.time_bins(times, events, 4)
    np.testing.assert_allclose(edges[1:-1], np.quantile(times[:8], [0.25, 0.5, 0.75]))
    assert edges[0] < 0.5 and edges[-1] > 20  # the censored extremes are covered
    b = losses.assign_bins(times, edges)
    assert b.min() == 0 and b.max() == 3
    for t, k in zip(times, b):  # brute force: left-closed intervals
        assert edges[k] <= t < edges[k + 1]
    assert losses.assign_bins([1e9, -5.0], edges).tolist() == [3, 0]


def test_discrete_risk_orders_by_survival():
    logits = torch.tensor([[-3.0, -3.0], [2.0, 2.0]])  # low then high hazards
    r = losses.discrete_risk(logits)
    assert r[1] > r[0]
