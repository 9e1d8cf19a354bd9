"""Using a stage-1 aggregator: zero-shot and few-shot slide classification, mSTAR+ initialisation.

* Zero-shot: the slide embedding in the shared space against prompt embeddings (MUSK's language
  side + the stage-1 report projection), CLIP-style.
* Few-shot: k slides per class drawn with several seeds, a logistic-regression probe (or class
  prototypes) on slide embeddings, scored on the remaining slides.
* mSTAR+: ``init_mil_aggregator`` loads the stage-1 aggregator into an ``openmusk.mil`` model,
  exactly as ``openmusk mil train --init-aggregator`` does with ``aggregator.safetensors``.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from openmusk.pretrain.mstar.model import MstarPretrained

__all__ = ["zero_shot_slides", "few_shot_slides", "init_mil_aggregator"]


def zero_shot_slides(pretrained: MstarPretrained, bags: Sequence[np.ndarray],
                     prompts: Mapping[str, Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """Class probabilities (S, C) of slides given as patch-feature arrays; each class's prompts are averaged."""
    if not prompts or any(not p for p in prompts.values()):
        raise ValueError("zero-shot needs at least one prompt for every class")
    classes = list(prompts)
    text = torch.stack([F.normalize(pretrained.embed_texts(list(prompts[c])).mean(0), dim=-1) for c in classes])
    slides = pretrained.embed_slides(bags)
    logits = pretrained.model.logit_scale.detach().exp().cpu() * slides @ text.t()
    return classes, torch.softmax(logits, dim=-1).numpy()


def few_shot_slides(features: np.ndarray, labels: Sequence[int], k: int, seeds: Sequence[int] = range(10),
                    method: str = "linear") -> dict:
    """Train on ``k`` random slides per class, test on the rest, once per seed.

    ``method``: "linear" (L2-normalised features, logistic regression) or "prototype" (nearest class
    mean, cosine). Returns per-seed balanced accuracy and macro AUC with their mean and 95% CI.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from openmusk.core.stats import mean_ci

    if method not in ("linear", "prototype"):
        raise ValueError(f"method must be 'linear' or 'prototype', got {method!r}")
    x = np.asarray(features, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    y = np.asarray(labels)
    classes = np.unique(y)
    for c in classes:
        if (y == c).sum() <= k:
            raise ValueError(f"class {c} has {(y == c).sum()} slides: need more than k={k} to leave a test set")
    accs, aucs = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        train = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in classes])
        test = np.setdiff1d(np.arange(len(y)), train)
        if method == "linear":
            clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], y[train])
            prob = clf.predict_proba(x[test])
        else:
            protos = np.stack([x[train][y[train] == c].mean(0) for c in classes])
            protos /= np.linalg.norm(protos, axis=1, keepdims=True).clip(1e-12)
            logits = 10.0 * x[test] @ protos.T
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
        pred = classes[prob.argmax(1)]
        accs.append(balanced_accuracy_score(y[test], pred))
        aucs.append(roc_auc_score(y[test], prob[:, 1]) if len(classes) == 2
                    else roc_auc_score(y[test], prob, multi_class="ovr"))
    return {"k": k, "method": method, "balanced_accuracy": accs, "auc": aucs,
            "balanced_accuracy_mean": mean_ci(accs, bounds=(0.0, 1.0)).to_dict(),
            "auc_mean": mean_ci(aucs, bounds=(0.0, 1.0)).to_dict()}


def init_mil_aggregator(mil_model: torch.nn.Module, weights: str | os.PathLike) -> dict:
    """mSTAR+: load stage-1 aggregator weights into ``mil_model.aggregator`` (strict: every tensor must match)."""
    from openmusk.mil.models import load_aggregator

    if getattr(mil_model, "aggregator", None) is None:
        raise ValueError(f"{type(mil_model).__name__} has no aggregator to initialise")
    return load_aggregator(mil_model.aggregator, weights, strict=True)
