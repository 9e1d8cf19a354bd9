"""Training one model on one split (AdamW, cosine schedule, early stopping on a validation metric),
and the pieces every slide-level training loop shares — :func:`fit` here and both mSTAR stages:
:class:`Optimization` (parameter groups' AdamW, per-step warm-up + cosine schedule, the gradient
step with clipping and fp16 loss scaling), autocast from :mod:`openmusk.core.runtime`, and atomic
resume files (:func:`save_resume`, :func:`load_resume`).

:func:`fit` is model-agnostic: any ``nn.Module`` whose ``forward(batch: dict) -> {"logits": ...,
"attention": ...}`` works with any task from :mod:`openmusk.mil.tasks`, and any dataset yielding
dicts with the collate function of your choice (default :func:`openmusk.mil.cohort.collate_bags`).
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from openmusk.core.io import atomic_path, torch_load
from openmusk.core.optim import build_adamw, param_groups, warmup_cosine
from openmusk.core.runtime import autocast, resolve_device, resolve_precision
from openmusk.mil.cohort import collate_bags

__all__ = ["FitConfig", "fit", "evaluate", "class_balanced_weights", "Optimization", "save_resume",
           "load_resume", "to_device"]


@dataclass
class FitConfig:
    """Optimisation settings (the paper's: AdamW, cosine, LR 1e-3, 100 epochs, patience 10)."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    batch_size: int = 1
    patience: int = 10
    precision: str = "auto"     # auto | fp32 | bf16 | fp16 autocast (auto: bf16 on GPU, fp32 on CPU)
    device: str = "auto"        # auto | cpu | cuda | cuda:N
    seed: int = 0
    num_workers: int = 0
    min_epochs: int = 0         # early stopping never stops before this many epochs


class Optimization:
    """AdamW over parameter groups with a per-step linear warm-up + cosine schedule, and the step.

    ``step(loss)``: zero the gradients, backward (loss-scaled when ``precision`` resolves to fp16),
    clip the global gradient norm to ``clip_norm`` if given, optimiser step, schedule step.
    ``state_dict()`` holds the optimiser, schedule and scaler for a resume file.
    """

    def __init__(self, groups: Sequence[dict], lr: float, total_steps: int, warmup_steps: int = 0,
                 betas: tuple[float, float] = (0.9, 0.999), clip_norm: float | None = None,
                 precision: str = "fp32", device: str | torch.device | None = "cpu"):
        self.optimizer = build_adamw(groups, lr=lr, betas=betas)
        self.scheduler = warmup_cosine(self.optimizer, warmup_steps, total_steps)
        self.clip_norm = clip_norm
        dev = resolve_device(device)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=resolve_precision(precision, dev) == "fp16")

    def step(self, loss: torch.Tensor) -> None:
        """One gradient step on ``loss``."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Optimiser, schedule and loss-scaler state (keys of a resume file)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (resume files without a scaler are accepted)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def save_resume(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a training state (tensors, state dicts, plain values) atomically: a crash never leaves
    a half-written resume file."""
    with atomic_path(path, suffix=".pt.tmp") as tmp:
        torch.save(state, tmp)


def load_resume(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The state :func:`save_resume` wrote, mapped onto ``device``; None when there is none."""
    if not Path(path).is_file():
        return None
    return torch_load(path, "resume state", map_location=device)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to ``device``."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights 1 / (count of the sample's class), for a class-balanced sampler."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, task, config: FitConfig | None = None,
             collate_fn: Callable = collate_bags, keep_attention: bool = False):
    """Predictions table (one row per sample, column ``id`` first) and, optionally, each sample's
    attention as ``{id: (attention (N,), batch dict of that sample)}``."""
    import pandas as pd

    config = config or FitConfig()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # once, not per batch
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=max(1, config.batch_size), shuffle=False,
                        collate_fn=collate_fn, num_workers=config.num_workers)
    rows: list[pd.DataFrame] = []
    attention: dict[str, tuple[np.ndarray, dict]] = {}
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, precision):
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
        config: FitConfig, sample_weights: np.ndarray | None = None,
        collate_fn: Callable = collate_bags, log: Callable[[str], None] | None = None,
        progress: bool = False) -> dict:
    """Train ``model`` in place and keep the weights of the best validation epoch.

    Early stopping: stop after ``patience`` epochs without improvement of ``task.score`` on
    ``val_set`` (when the score is undefined, e.g. one class in a tiny validation set, the
    validation loss decides), never before ``config.min_epochs``. A tie with the best score so far
    keeps the later epoch (a small validation split is often perfect from epoch 0; the model that
    trained longer is then kept) but does not reset the patience. Without ``val_set`` the last
    epoch is kept. ``sample_weights``
    (one per training sample) switches on a weighted sampler with replacement (class-balanced).
    Returns ``{"best_epoch", "best_score", "epochs_run", "history"}``.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # once, not per batch
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
    opt = Optimization(param_groups(model, weight_decay=config.weight_decay, depth=0), config.lr,
                       config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch,
                       precision=config.precision, device=device)
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
            batch = to_device(batch, device)
            with autocast(device, precision):
                out = model(batch)
            loss = task.loss(out, batch)
            if out.get("aux_loss") is not None:  # a model's own training term (e.g. CMTA alignment)
                loss = loss + out["aux_loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: loss is {loss.item()} on batch {batch['id']}")
            opt.step(loss)
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
            if current == best["score"]:  # tie: prefer the later epoch, keep counting patience
                best = {"score": current, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            stale += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{record.get('val_score', float('nan')):.4f}")
        if log:
            log(f"epoch {epoch:3d} train_loss {record['train_loss']:.4f}"
                + "".join(f" {k} {record[k]:.4f}" for k in ("val_score", "val_loss") if k in record))
        if val_set is not None and stale >= config.patience and epoch + 1 >= config.min_epochs:
            break
    if bar is not None:
        bar.close()
    model.load_state_dict(best["state"])
    best_score = history[best["epoch"]].get("val_score", float("nan"))
    return {"best_epoch": best["epoch"], "best_score": best_score, "epochs_run": len(history),
            "history": history}


@torch.no_grad()
def _table_loss(model: nn.Module, dataset: Dataset, task, config: FitConfig,
                collate_fn: Callable) -> float:
    """Mean loss over ``dataset`` in evaluation mode (one batch for Cox, which compares patients)."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # once, not per batch
    model.eval()
    bs = len(dataset) if getattr(task, "loss_name", "") == "cox" else max(1, config.batch_size)
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=bs, shuffle=False, collate_fn=collate_fn):
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = model(batch)
        total += float(task.loss(out, batch)) * len(batch["id"])
        count += len(batch["id"])
    return total / max(1, count)
