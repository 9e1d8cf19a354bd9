"""The MUSK authors' benchmark protocol (``protocol: musk-paper``), number for number.

Each function follows the protocol document MUSK_BENCHMARK_PROTOCOL.md (the authors' fork of
CLIP_benchmark, lilab-stanford/MUSK ``benchmarks/clip_benchmark``), where it differs from the
``clip-benchmark`` protocol of :mod:`openmusk.eval.tasks`:
* zero-shot: a class embedding is the mean of its L2-normalised prompt embeddings, NOT
  re-normalised; logits ``100 * image @ classes.T``; balanced accuracy (2.2-2.4);
* image retrieval: leave-one-out over every image given (the runner passes all splits);
  Acc@1/3/5 and mMV@5 only, Euclidean distances (4.1-4.4);
* linear probe and few-shot: a torch ``Linear`` trained 10 epochs with AdamW (lr 0.1, no weight
  decay), batch 256, a per-step cosine schedule, seeded as the authors seed it; k-shot items are
  the first k per class in ``torch.randperm`` order (5.4-5.7).
Results keep the layout of :mod:`openmusk.eval.tasks` (``metrics``, ``per_sample``, ``details``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from openmusk.core.stats import mean_ci
from openmusk.eval.metrics import CLASSIFICATION_METRICS, image_retrieval_outcomes
from openmusk.eval.specs import PAPER_PROTOCOL
from openmusk.eval.tasks import classification_result

__all__ = ["paper_text_embeddings", "paper_class_weights",
           "paper_zero_shot", "paper_image_retrieval", "paper_kshot_indices", "paper_probe",
           "paper_linear_probe", "paper_few_shot", "PROBE_EPOCHS", "PROBE_LR", "PROBE_BATCH"]

PROBE_EPOCHS, PROBE_LR, PROBE_BATCH = 10, 0.1, 256


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def paper_text_embeddings(encoder: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Head + L2 text embeddings, long texts truncated to the first ``max_len`` tokens as the
    authors' tokenizer call does (1.3), not windowed."""
    model, tokenizer = getattr(encoder, "model", None), getattr(encoder, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "encode_text"):
        from openmusk.encoders import encode_texts

        return _unit(encode_texts(encoder, texts, batch_size))
    from openmusk.core.runtime import autocast
    from openmusk.text.report import report_embeddings

    with torch.no_grad(), autocast(encoder.device, encoder.precision):
        out = report_embeddings(model, tokenizer, list(texts), max_len=getattr(encoder, "max_len", 100),
                                max_windows=1)
    return _unit(out.float().cpu().numpy())


def paper_class_weights(encoder: Any, classes: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(C, D) class embeddings: the mean of each class's normalised prompt embeddings, kept
    un-normalised as the authors' code does (2.2)."""
    if not classes:
        raise ValueError("zero-shot classification needs class names")
    prompts = [t.format(c=c) for c in classes for t in templates]
    emb = paper_text_embeddings(encoder, prompts)
    return emb.reshape(len(classes), len(templates), -1).mean(1)


def paper_zero_shot(image_features: np.ndarray, labels: Sequence[int], class_weights: np.ndarray,
                    n_resamples: int = 1000, seed: int = 0) -> dict:
    """Zero-shot classification as the authors run it: argmax of ``100 * image @ W.T``."""
    img = torch.as_tensor(_unit(image_features))
    w = torch.as_tensor(np.asarray(class_weights, dtype=np.float32))
    pred = (100.0 * img @ w.T).argmax(1).numpy()
    return classification_result("zeroshot", labels, pred, n_resamples, seed, protocol=PAPER_PROTOCOL,
                                 n_classes=int(len(w)), renormalised_class_embeddings=False)


def paper_image_retrieval(features: np.ndarray, labels: Sequence[int], n_resamples: int = 1000,
                          seed: int = 0) -> dict:
    """Leave-one-out image->image retrieval over every image given: acc@1/3/5 and mmv@5 (4.4)."""
    from openmusk.core.stats import bootstrap_ci

    out = image_retrieval_outcomes(features, labels, ks=(1, 3, 5))
    keep = {k: out[k] for k in ("acc@1", "acc@3", "acc@5", "mmv@5")}
    metrics = {k: bootstrap_ci(np.mean, v, n_resamples=n_resamples, seed=seed).to_dict()
               for k, v in keep.items()}
    return {"task": "image_retrieval", "metrics": metrics,
            "per_sample": {k: v.tolist() for k, v in keep.items()},
            "details": {"n_images": int(len(labels)), "protocol": PAPER_PROTOCOL,
                        "gallery": "every image, leave-one-out"}}


def paper_kshot_indices(labels: Sequence[int], k: int, seed: int) -> np.ndarray | None:
    """Training rows kept, in ``randperm`` order: the first ``k`` of each class (k = -1: all).

    None when some class ends with fewer than k items (the authors print "insufficient data").
    """
    y = np.asarray(labels, dtype=np.int64)
    g = torch.Generator()
    g.manual_seed(int(seed))
    perm = torch.randperm(len(y), generator=g).numpy()
    if k < 0:
        return perm
    counts: dict[int, int] = {}
    keep = []
    for i in perm:
        c = int(y[i])
        if counts.get(c, 0) < k:
            counts[c] = counts.get(c, 0) + 1
            keep.append(int(i))
    if any(counts.get(int(c), 0) != k for c in np.unique(y)):
        return None
    return np.asarray(keep, dtype=np.int64)


def paper_probe(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, seed: int,
                epochs: int = PROBE_EPOCHS, lr: float = PROBE_LR,
                batch_size: int = PROBE_BATCH) -> np.ndarray:
    """Train the authors' linear probe on (already selected) rows; test-set predictions (5.5-5.7)."""
    from openmusk.core.runtime import seed_everything

    x = torch.as_tensor(np.asarray(train_x, dtype=np.float32))
    y = torch.as_tensor(np.asarray(train_y, dtype=np.int64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size,
                                         shuffle=True)
    seed_everything(int(seed))
    probe = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    torch.nn.init.xavier_uniform_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    total = epochs * len(loader)
    for epoch in range(epochs):
        for i, (xb, yb) in enumerate(loader):
            step = i + epoch * len(loader)
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * step / total)) * lr
            opt.zero_grad()
            loss_fn(probe(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        return probe(torch.as_tensor(np.asarray(test_x, dtype=np.float32))).argmax(1).numpy()


def paper_linear_probe(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray,
                       test_y: Sequence[int], seed: int = 123, n_resamples: int = 1000) -> dict:
    """Full-data linear probe (``--fewshot_k -1``): all training rows in ``randperm(seed)`` order."""
    idx = paper_kshot_indices(train_y, -1, seed)
    tx, ty = np.asarray(train_x)[idx], np.asarray(train_y)[idx]
    pred = paper_probe(tx, ty, test_x, seed)
    return classification_result("linear_probe", test_y, pred, n_resamples, seed, protocol=PAPER_PROTOCOL,
                                 n_train=int(len(idx)), epochs=PROBE_EPOCHS, lr=PROBE_LR,
                                 batch_size=PROBE_BATCH)


def paper_few_shot(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray,
                   test_y: Sequence[int], shots: Sequence[int], seeds: Sequence[int]) -> dict:
    """k-shot probes, one authors' run per (k, seed); per-seed balanced accuracies and their mean."""
    balanced = CLASSIFICATION_METRICS["balanced_accuracy"]
    accuracy = CLASSIFICATION_METRICS["accuracy"]
    train_x, train_y, test_y = np.asarray(train_x), np.asarray(train_y), np.asarray(test_y)
    per_seed: dict[str, dict[str, list[float]]] = {}
    metrics, skipped = {}, []
    for k in shots:
        bal, acc = [], []
        for s in seeds:
            idx = paper_kshot_indices(train_y, int(k), int(s))
            if idx is None:
                break
            pred = paper_probe(train_x[idx], train_y[idx], test_x, int(s))
            bal.append(balanced(test_y, pred))
            acc.append(accuracy(test_y, pred))
        if len(bal) != len(seeds):
            skipped.append(int(k))
            continue
        per_seed[str(k)] = {"balanced_accuracy": bal, "accuracy": acc}
        metrics[f"balanced_accuracy@{k}shot"] = mean_ci(bal, bounds=(0.0, 1.0)).to_dict()
        metrics[f"accuracy@{k}shot"] = mean_ci(acc, bounds=(0.0, 1.0)).to_dict()
    if not metrics:
        raise ValueError(f"few-shot: insufficient data for every k in {list(shots)} (some class has "
                         "fewer training items)")
    return {"task": "few_shot", "metrics": metrics, "per_sample": {"per_seed": per_seed},
            "details": {"shots": [int(k) for k in shots if k not in skipped], "skipped_shots": skipped,
                        "seeds": [int(s) for s in seeds], "protocol": PAPER_PROTOCOL,
                        "epochs": PROBE_EPOCHS, "lr": PROBE_LR, "batch_size": PROBE_BATCH}}
