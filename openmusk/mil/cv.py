"""K-fold stratified cross-validation around :func:`openmusk.mil.trainer.fit`, resumable per fold.

Each fold holds out a test split; a stratified part of the rest (``val_fraction``) drives early
stopping. Per fold, ``<out_dir>/fold_<k>/`` receives ``model.safetensors``, ``task.json``,
``split.json``, ``history.json``, ``predictions.csv`` and, last, ``metrics.json``: a fold whose
``metrics.json`` exists is finished and skipped on a rerun. Everything is written atomically.
The pooled out-of-fold predictions go to ``<out_dir>/oof_predictions.csv``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from openmusk.core.io import atomic_path, read_json, write_json
from openmusk.mil.cohort import collate_bags
from openmusk.mil.tasks import task_from_dict
from openmusk.mil.trainer import FitConfig, evaluate, fit
from openmusk.core.stats import mean_ci

__all__ = ["stratified_folds", "validation_split", "cross_validate", "save_model", "load_model_state",
           "FOLD_METRIC"]

FOLD_METRIC = {"classification": ("auc", "value"), "survival": ("c_index", "value")}


def stratified_folds(strata: Sequence, n_folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test indices of each fold, stratified by ``strata`` (class, or event for survival)."""
    from sklearn.model_selection import StratifiedKFold

    strata = np.asarray(strata)
    counts = np.unique(strata, return_counts=True)[1]
    if counts.min() < n_folds:
        raise ValueError(f"{n_folds}-fold stratified CV needs >= {n_folds} samples per stratum (class, "
                         f"or event status for survival), the smallest has {counts.min()}: lower `folds` "
                         "or add samples")
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [test for _, test in skf.split(np.zeros(len(strata)), strata)]


def validation_split(indices: np.ndarray, strata: Sequence, fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (train, validation), stratified; no validation when fraction is 0."""
    from sklearn.model_selection import train_test_split

    if fraction <= 0:
        return np.asarray(indices), np.asarray([], dtype=int)
    s = np.asarray(strata)[indices]
    stratify = s if np.unique(s, return_counts=True)[1].min() >= 2 else None
    n_val = int(np.ceil(fraction * len(s)))
    n_classes = len(np.unique(s))
    if stratify is not None and min(n_val, len(s) - n_val) < n_classes:
        raise ValueError(f"val_fraction {fraction} of {len(s)} training samples leaves {n_val} for validation "
                         f"and {len(s) - n_val} for training, fewer than the {n_classes} classes: change "
                         "`val_fraction`, lower `folds` or add samples")
    tr, va = train_test_split(np.asarray(indices), test_size=fraction, random_state=seed,
                              stratify=stratify)
    return np.sort(tr), np.sort(va)


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Model weights as safetensors, written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors.tmp") as tmp:
        save_file(state, str(tmp), metadata=metadata or {})


def load_model_state(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load safetensors weights saved by :func:`save_model` (strict: names and shapes must match)."""
    from openmusk.core.io import load_safetensors

    model.load_state_dict(load_safetensors(path, "model weights"), strict=True)
    return model


def cross_validate(records: Sequence[Any], strata: Sequence, build: Callable[[list], tuple[Any, nn.Module]],
                   make_dataset: Callable[[list, Any, bool], Dataset], config: FitConfig,
                   out_dir: str | os.PathLike, folds: int = 5, val_fraction: float = 0.2,
                   balanced_sampler: bool = True, collate_fn: Callable = collate_bags,
                   after_fold: Callable[..., None] | None = None, n_resamples: int = 1000,
                   log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Run (or resume) k-fold CV and return ``{"folds": [...], "summary": {...}, "oof": DataFrame}``.

    ``build(train_records) -> (task, model)`` makes a fresh task (e.g. survival bins from the
    training patients) and model per fold; ``make_dataset(records, task, train)`` builds a dataset
    of batch dicts; records need ``patient_id`` (and ``label``, or ``time``/``event``).
    ``after_fold(fold, model, task, test_records, test_set, fold_dir)`` runs before a fold is
    marked finished (e.g. to export attention).
    """
    import pandas as pd

    out_dir = Path(out_dir)
    records = list(records)
    test_sets = stratified_folds(strata, folds, config.seed)
    fold_results = []
    for k, test_idx in enumerate(test_sets):
        fold_dir = out_dir / f"fold_{k}"
        done = fold_dir / "metrics.json"
        if done.is_file():
            log(f"fold {k}: finished earlier, skipped ({done})")
            res = read_json(done)
            res["predictions"] = pd.read_csv(fold_dir / "predictions.csv", dtype={"id": str})
            fold_results.append(res)
            continue
        rest = np.setdiff1d(np.arange(len(records)), test_idx)
        tr_idx, va_idx = validation_split(rest, strata, val_fraction, config.seed + k)
        train_recs = [records[i] for i in tr_idx]
        val_recs = [records[i] for i in va_idx]
        test_recs = [records[i] for i in test_idx]
        torch.manual_seed(config.seed + k)
        task, model = build(train_recs)
        weights = None
        if balanced_sampler and task.kind == "classification":
            from openmusk.mil.trainer import class_balanced_weights
            weights = class_balanced_weights(np.array([r.label for r in train_recs]))
        fold_cfg = dataclasses.replace(config, seed=config.seed + k)
        fit_res = fit(model, make_dataset(train_recs, task, True),
                      make_dataset(val_recs, task, False) if val_recs else None, task, fold_cfg,
                      sample_weights=weights, collate_fn=collate_fn, progress=progress)
        test_set = make_dataset(test_recs, task, False)
        table = evaluate(model, test_set, task, fold_cfg, collate_fn)
        table.insert(1, "fold", k)
        train_table = None
        if task.kind == "survival":
            train_table = pd.DataFrame({"time": [r.time for r in train_recs],
                                        "event": [r.event for r in train_recs]})
            table["risk_group"] = np.where(table["risk"] > table["risk"].median(), "high", "low")
        fold_metrics = task.metrics(table, train_table, n_resamples=n_resamples, seed=config.seed)
        save_model(model, fold_dir / "model.safetensors", {"task": task.kind})
        write_json(fold_dir / "task.json", task.to_dict())
        write_json(fold_dir / "split.json", {"train": [r.patient_id for r in train_recs],
                                             "val": [r.patient_id for r in val_recs],
                                             "test": [r.patient_id for r in test_recs]})
        write_json(fold_dir / "history.json", fit_res["history"])
        with atomic_path(fold_dir / "predictions.csv", suffix=".csv.tmp") as tmp:
            table.to_csv(tmp, index=False)
        if after_fold is not None:
            after_fold(k, model, task, test_recs, test_set, fold_dir)
        res = {"fold": k, "best_epoch": fit_res["best_epoch"], "epochs_run": fit_res["epochs_run"],
               "val_score": fit_res["best_score"], "metrics": fold_metrics}
        write_json(done, res)
        log(f"fold {k}: {_headline(task.kind, fold_metrics)} (best epoch {fit_res['best_epoch']}, "
            f"{fit_res['epochs_run']} run; ties keep the later epoch, min_epochs {config.min_epochs})")
        # the table as a resumed run reads it back, so that a resumed run is bit-identical
        res["predictions"] = pd.read_csv(fold_dir / "predictions.csv", dtype={"id": str})
        fold_results.append(res)
    oof = pd.concat([r.pop("predictions") for r in fold_results], ignore_index=True)
    with atomic_path(out_dir / "oof_predictions.csv", suffix=".csv.tmp") as tmp:
        oof.to_csv(tmp, index=False)
    kind = task_from_dict(read_json(out_dir / "fold_0" / "task.json")).kind
    key, sub = FOLD_METRIC[kind]
    per_fold = [r["metrics"][key][sub] for r in fold_results if key in r["metrics"]]
    summary = {"metric": key, "per_fold": per_fold,
               "mean": mean_ci(per_fold, bounds=(0.0, 1.0)).to_dict() if per_fold else None}
    return {"folds": fold_results, "summary": summary, "oof": oof}


def _headline(kind: str, m: dict) -> str:
    """One line of a fold's main metrics for the console."""
    if kind == "classification":
        auc = m.get("auc")
        return (f"AUC {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" if auc else "AUC n/a") + \
            f", balanced accuracy {m['balanced_accuracy']:.3f}"
    c = m.get("c_index")
    return (f"c-index {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" if c else "c-index n/a") + \
        (f", Uno {m['uno_c_index']:.3f}" if "uno_c_index" in m else "")
