"""Prediction tasks: what a model's outputs mean, their loss, per-patient predictions and metrics.

A task is the link between any model that maps a batch dict to ``{"logits": ...}`` and the
trainer: it holds the loss, turns outputs into prediction columns, and scores a predictions table
(the validation metric for early stopping, and the full metrics for reporting). Other model
families (e.g. MCAT/PORPOISE with genomics) reuse the same tasks and trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from openmusk.mil import losses, metrics

__all__ = ["ClassificationTask", "SurvivalTask", "Task", "task_from_dict"]


@dataclass
class ClassificationTask:
    """Binary or multi-class classification with cross-entropy; validation metric AUC."""

    classes: list[str]
    kind: str = "classification"

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy of the logits against ``batch['label']``."""
        return F.cross_entropy(outputs["logits"].float(), batch["label"])

    def predict(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Columns ``label`` and ``prob_<class>`` per patient."""
        probs = torch.softmax(outputs["logits"].float(), dim=-1).detach().cpu().numpy()
        cols = {"label": batch["label"].cpu().numpy()}
        cols.update({f"prob_{c}": probs[:, k] for k, c in enumerate(self.classes)})
        return cols

    def probs(self, table) -> np.ndarray:
        """(N, C) class probabilities from a predictions table."""
        return table[[f"prob_{c}" for c in self.classes]].to_numpy(float)

    def score(self, table) -> float:
        """AUC (NaN when the table holds a single class)."""
        y = table["label"].to_numpy(int)
        if len(np.unique(y)) < self.n_outputs:
            return float("nan")
        return metrics.roc_auc(y, self.probs(table))

    def metrics(self, table, train_table=None, n_resamples: int = 1000, seed: int = 0) -> dict:
        """AUC with CI, balanced accuracy, specificity at 90% sensitivity (binary)."""
        return metrics.classification_metrics(table["label"].to_numpy(int), self.probs(table),
                                               n_resamples=n_resamples, seed=seed)

    def strata(self, records) -> np.ndarray:
        """Stratification labels for cross-validation: the class."""
        return np.array([r.label for r in records])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "classes": list(self.classes)}


@dataclass
class SurvivalTask:
    """Survival with the discrete-time NLL (``loss='nll'``, hazards over ``edges``) or Cox partial
    likelihood (``loss='cox'``, one risk output); validation metric Harrell's c-index."""

    loss_name: str = "nll"
    edges: list[float] = field(default_factory=list)
    alpha: float = 0.0
    kind: str = "survival"

    @property
    def n_outputs(self) -> int:
        return len(self.edges) - 1 if self.loss_name == "nll" else 1

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        """NLL over the time bins, or the negative Cox partial log-likelihood of the batch."""
        logits = outputs["logits"]
        if self.loss_name == "nll":
            return losses.nll_survival_loss(logits, batch["bin"], batch["event"], alpha=self.alpha)
        return losses.cox_loss(logits[:, 0], batch["time"], batch["event"])

    def risk(self, logits: torch.Tensor) -> torch.Tensor:
        """Risk score (higher = earlier event)."""
        return losses.discrete_risk(logits) if self.loss_name == "nll" else logits[:, 0].float()

    def predict(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Columns ``time``, ``event``, ``risk`` (and survival per bin for the NLL)."""
        logits = outputs["logits"].detach().float()
        cols = {"time": batch["time"].cpu().numpy(), "event": batch["event"].cpu().numpy().astype(int),
                "risk": self.risk(logits).cpu().numpy()}
        if self.loss_name == "nll":
            surv = torch.cumprod(1 - torch.sigmoid(logits), dim=1).cpu().numpy()
            cols.update({f"surv_{k}": surv[:, k] for k in range(surv.shape[1])})
        return cols

    def score(self, table) -> float:
        """Harrell's c-index (NaN without an event)."""
        e = table["event"].to_numpy(int)
        if e.sum() == 0:
            return float("nan")
        try:
            return metrics.harrell_c(table["time"].to_numpy(float), e, table["risk"].to_numpy(float))
        except ValueError:
            return float("nan")

    def metrics(self, table, train_table=None, n_resamples: int = 1000, seed: int = 0) -> dict:
        """c-index with CI, Uno's c-index (censoring from ``train_table``), KM split, log-rank, HR."""
        tt = None if train_table is None else train_table["time"].to_numpy(float)
        te = None if train_table is None else train_table["event"].to_numpy(int)
        return metrics.survival_metrics(table["time"].to_numpy(float), table["event"].to_numpy(int),
                                        table["risk"].to_numpy(float), tt, te,
                                        n_resamples=n_resamples, seed=seed)

    def strata(self, records) -> np.ndarray:
        """Stratification labels for cross-validation: the event indicator."""
        return np.array([r.event for r in records])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "loss_name": self.loss_name, "edges": [float(x) for x in self.edges],
                "alpha": self.alpha}


Task = ClassificationTask | SurvivalTask


def task_from_dict(d: dict) -> Task:
    """Rebuild a task saved with ``to_dict`` (per fold, beside the checkpoint)."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "classification":
        return ClassificationTask(**d)
    if kind == "survival":
        return SurvivalTask(**d)
    raise ValueError(f"unknown task kind {kind!r}")
