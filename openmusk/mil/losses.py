"""Survival losses for slide-level models: discrete-time NLL (PORPOISE/MCAT) and Cox partial likelihood.

Discrete time: follow-up is cut into ``n_bins`` intervals at the quantiles of the observed event
times; the model predicts one hazard logit per interval, h_k = sigmoid(logit_k), and the survival
S_k = prod_{j<=k} (1 - h_j). An event in bin y contributes -log S_{y-1} - log h_y; a patient censored
in bin y contributes -log S_y (they survived at least through bin y). Risk for ranking = -sum_k S_k.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["time_bins", "assign_bins", "nll_survival_loss", "cox_loss", "discrete_risk"]


def time_bins(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Bin edges (n_bins + 1) at the quantiles of the event times, widened to cover all times.

    As in MCAT/PORPOISE: quantiles of the uncensored times, first edge below the smallest and
    last above the largest time of anyone (censored or not). Compute on training patients only.
    """
    times, events = np.asarray(times, float), np.asarray(events).astype(bool)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    observed = times[events] if events.any() else times
    edges = np.quantile(observed, np.linspace(0, 1, n_bins + 1))
    edges[0], edges[-1] = min(times.min(), edges[0]) - 1e-6, max(times.max(), edges[-1]) + 1e-6
    edges = np.maximum.accumulate(edges)
    return edges


def assign_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Interval index 0..n_bins-1 of each time (left-closed intervals; out-of-range times clipped)."""
    idx = np.searchsorted(edges, np.asarray(times, float), side="right") - 1
    return np.clip(idx, 0, len(edges) - 2).astype(np.int64)


def nll_survival_loss(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor,
                      alpha: float = 0.0, eps: float = 1e-7) -> torch.Tensor:
    """Mean discrete-time negative log-likelihood; ``alpha`` up-weights uncensored patients (MCAT)."""
    hazards = torch.sigmoid(logits.float())
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)  # S_{-1} = 1
    y = bins.long().view(-1, 1)
    c = 1.0 - events.float().view(-1, 1)
    s_prev = torch.gather(surv_pad, 1, y).clamp(min=eps)
    h_this = torch.gather(hazards, 1, y).clamp(min=eps)
    s_this = torch.gather(surv_pad, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_prev) + torch.log(h_this))
    censored = -c * torch.log(s_this)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def discrete_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score from hazard logits: minus the summed survival curve (higher = earlier event)."""
    return -torch.cumprod(1 - torch.sigmoid(logits.float()), dim=1).sum(dim=1)


def cox_loss(risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, averaged over events.

    Each event i contributes -(r_i - log sum_{j: t_j >= t_i} exp r_j); the risk set includes
    everyone whose time ties with t_i (Breslow). Needs at least one event in the batch.
    """
    risk, times, events = risk.float().view(-1), times.float().view(-1), events.float().view(-1)
    if events.sum() == 0:
        return risk.sum() * 0.0  # no event, no information: zero loss that keeps the graph
    at_risk = times.view(1, -1) >= times.view(-1, 1)  # [i, j]: j is at risk at t_i
    log_denominator = torch.logsumexp(risk.view(1, -1).masked_fill(~at_risk, float("-inf")), dim=1)
    return -((risk - log_denominator) * events).sum() / events.sum()
