"""Training one model on one split: AdamW, cosine schedule, early stopping on a validation metric.

Model-agnostic: any ``nn.Module`` whose ``forward(batch: dict) -> {"logits": ..., "attention": ...}``
works with any task from :mod:`openmusk.mil.tasks`, and any dataset yielding dicts with the
collate function of your choice (default :func:`openmusk.mil.cohort.collate_bags`).
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from openmusk.mil.cohort import collate_bags
from openmusk.core.optim import build_adamw, param_groups, warmup_cosine

__all__ = ["TrainConfig", "fit", "evaluate", "resolve_device", "class_balanced_weights"]


@dataclass
class TrainConfig:
    """Optimisation settings (the paper's: AdamW, cosine, LR 1e-3, 100 epochs, patience 10)."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    batch_size: int = 1
    patience: int = 10
    precision: str = "fp32"     # fp32 | bf16 (autocast on CPU or GPU)
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, precision: str):
    """bf16 autocast on the device (CPU autocast supports bf16), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to ``device``."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights 1 / (count of the sample's class), for a class-balanced sampler."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, task, config: TrainConfig | None = None,
             collate_fn: Callable = collate_bags, keep_attention: bool = False):
    """Predictions table (one row per sample, column ``id`` first) and, optionally, each sample's
    attention as ``{id: (attention (N,), batch dict of that sample)}``."""
    import pandas as pd

    config = config or TrainConfig()
    device = resolve_device(config.device)
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=max(1, config.batch_size), shuffle=False,
                        collate_fn=collate_fn, num_workers=config.num_workers)
    rows: list[pd.DataFrame] = []
    attention: dict[str, tuple[np.ndarray, dict]] = {}
    for batch in loader:
        batch = _to(batch, device)
        with _autocast(device, config.precision):
            out = model(batch)
        cols = task.predict(out, batch)
        rows.append(pd.DataFrame({"id": batch["id"], **cols}))
        if keep_attention and out.get("attention") is not None:
            att = out["attention"].float().cpu().numpy()
            mask = batch["mask"].cpu().numpy() if "mask" in batch else np.ones(att.shape, bool)
            for i, sid in enumerate(batch["id"]):
                sample = {k: v[i][mask[i]].cpu().numpy() for k, v in batch.items()
                          if k in ("coords", "slide_index")}
                attention[sid] = (att[i][mask[i]], sample)
    table = pd.concat(rows, ignore_index=True)
    return (table, attention) if keep_attention else table


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset | None, task,
        config: TrainConfig, sample_weights: np.ndarray | None = None,
        collate_fn: Callable = collate_bags, log: Callable[[str], None] | None = None,
        progress: bool = False) -> dict:
    """Train ``model`` in place and keep the weights of the best validation epoch.

    Early stopping: stop after ``patience`` epochs without improvement of ``task.score`` on
    ``val_set`` (when the score is undefined, e.g. one class in a tiny validation set, the
    validation loss decides). Without ``val_set`` the last epoch is kept. ``sample_weights``
    (one per training sample) switches on a weighted sampler with replacement (class-balanced).
    Returns ``{"best_epoch", "best_score", "epochs_run", "history"}``.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    sampler = None
    if sample_weights is not None:
        sampler = WeightedRandomSampler(torch.as_tensor(sample_weights, dtype=torch.double),
                                        num_samples=len(train_set), replacement=True, generator=gen)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=sampler is None,
                        sampler=sampler, generator=gen if sampler is None else None,
                        collate_fn=collate_fn, num_workers=config.num_workers,
                        drop_last=config.batch_size > 1 and len(train_set) > config.batch_size)
    steps_per_epoch = max(1, len(loader))
    optimizer = build_adamw(param_groups(model, weight_decay=config.weight_decay, depth=0),
                            lr=config.lr, betas=(0.9, 0.999))
    scheduler = warmup_cosine(optimizer, config.warmup_epochs * steps_per_epoch,
                              config.epochs * steps_per_epoch)
    best = {"score": -math.inf, "epoch": -1, "state": None}
    history: list[dict] = []
    stale = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.epochs, desc="epochs", leave=False)
    for epoch in range(config.epochs):
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            batch = _to(batch, device)
            with _autocast(device, config.precision):
                out = model(batch)
            loss = task.loss(out, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: loss is {loss.item()} on batch {batch['id']}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch["id"])
            count += len(batch["id"])
        record = {"epoch": epoch, "train_loss": total / max(1, count)}
        if val_set is not None and len(val_set):
            table = evaluate(model, val_set, task, config, collate_fn)
            record["val_score"] = current = task.score(table)
            if math.isnan(current):  # metric undefined on this validation set: use its loss
                record["val_loss"] = _table_loss(model, val_set, task, config, collate_fn)
                current = -record["val_loss"]
        else:
            current = epoch  # no validation: the last epoch wins
        history.append(record)
        if current > best["score"]:
            best = {"score": current, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            stale = 0
        else:
            stale += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{record.get('val_score', float('nan')):.4f}")
        if log:
            log(f"epoch {epoch:3d} train_loss {record['train_loss']:.4f}"
                + "".join(f" {k} {record[k]:.4f}" for k in ("val_score", "val_loss") if k in record))
        if val_set is not None and stale >= config.patience:
            break
    if bar is not None:
        bar.close()
    model.load_state_dict(best["state"])
    best_score = history[best["epoch"]].get("val_score", float("nan"))
    return {"best_epoch": best["epoch"], "best_score": best_score, "epochs_run": len(history),
            "history": history}


@torch.no_grad()
def _table_loss(model: nn.Module, dataset: Dataset, task, config: TrainConfig,
                collate_fn: Callable) -> float:
    """Mean loss over ``dataset`` in evaluation mode (one batch for Cox, which compares patients)."""
    device = resolve_device(config.device)
    model.eval()
    bs = len(dataset) if getattr(task, "loss_name", "") == "cox" else max(1, config.batch_size)
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=bs, shuffle=False, collate_fn=collate_fn):
        batch = _to(batch, device)
        with _autocast(device, config.precision):
            out = model(batch)
        total += float(task.loss(out, batch)) * len(batch["id"])
        count += len(batch["id"])
    return total / max(1, count)
