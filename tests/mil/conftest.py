"""Synthetic MIL data with planted signal, and one CPU thread per test (the machine is shared)."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small MIL models run fastest on one thread; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_bags(n: int, dim: int = 32, seed: int = 0, n_planted: int = 3, strength: float = 5.0,
                 survival: bool = False) -> list[dict]:
    """Bags of 30-60 Gaussian instances.

    Classification: positive bags (half) hold ``n_planted`` instances shifted along feature 0, the
    label's only evidence. Survival: every bag holds 3 "tumour" instances (feature 1 shifted by
    ``strength``) whose feature 0 carries a hidden grade z ~ U(0, 1) (shift 3 z); event times are
    exponential with rate exp(6 z), 30% of patients censored uniformly earlier.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = int(rng.integers(30, 60))
        x = rng.normal(size=(m, dim)).astype(np.float32)
        k = n_planted if survival or rng.random() < 0.5 else 0
        planted = np.zeros(m, bool)
        planted[rng.choice(m, k, replace=False)] = True
        z = float(rng.random())
        if survival:
            x[planted, 1] += strength
            x[planted, 0] += 3 * z
        else:
            x[planted, 0] += strength
        item = {"id": f"p{seed}_{i}", "features": torch.from_numpy(x),
                "coords": torch.from_numpy(np.stack([np.arange(m), np.zeros(m)], 1).astype(np.int64)),
                "slide_index": torch.zeros(m, dtype=torch.long), "planted": planted,
                "label": int(k > 0), "time": float("nan"), "event": -1, "bin": -1}
        if survival:
            item["grade"] = z
            t = rng.exponential(1.0 / np.exp(6 * z))
            censored = rng.random() < 0.3
            item["time"] = float(t * rng.uniform(0.2, 1.0) if censored else t)
            item["event"] = int(not censored)
            item["label"] = -1
        out.append(item)
    return out


@pytest.fixture
def make_bags():
    """The :func:`planted_bags` factory."""
    return planted_bags
