"""VQA metrics: exact-match accuracy (overall, closed yes/no, open) with bootstrap 95% CIs, the
predictions file, and the comparison of two runs by a Mann-Whitney U test on per-question
correctness, as the MUSK paper reports for PathVQA.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from openmusk.eval.vqa.answers import is_closed, normalize_answer
from openmusk.core.io import atomic_path
from openmusk.core.stats import Estimate, bootstrap_ci, mann_whitney

__all__ = ["exact_match", "vqa_accuracy", "accuracy_report", "write_predictions",
           "read_predictions", "compare_predictions", "PREDICTION_FIELDS"]

PREDICTION_FIELDS = ("question_id", "image_id", "question", "answer", "prediction", "probability",
                     "closed", "correct", "top_answers")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per question: 1.0 when prediction and reference agree after VQA normalisation, else 0.0."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return np.array([float(normalize_answer(p) == normalize_answer(r))
                     for p, r in zip(predictions, references)])


def vqa_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Exact-match accuracy after normalisation (PathVQA's accuracy)."""
    if len(references) == 0:
        raise ValueError("accuracy of zero questions")
    return float(exact_match(predictions, references).mean())


def accuracy_report(correct: Sequence[float], closed: Sequence[bool], n_resamples: int = 1000,
                    seed: int = 0) -> dict[str, Estimate]:
    """Accuracy overall, on closed (yes/no) and on open questions, each with a bootstrap 95% CI."""
    correct = np.asarray(correct, dtype=np.float64)
    closed = np.asarray(closed, dtype=bool)
    if correct.shape != closed.shape:
        raise ValueError(f"correct {correct.shape} and closed {closed.shape} differ in length")
    report = {}
    for name, sel in (("overall", np.ones_like(closed)), ("closed", closed), ("open", ~closed)):
        if sel.any():
            report[name] = bootstrap_ci(np.mean, correct[sel], n_resamples=n_resamples, seed=seed)
    return report


def write_predictions(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write per-question predictions atomically as CSV or JSONL (by the file's suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            with open(tmp, "w") as f:
                for row in rows:
                    f.write(json.dumps({k: row[k] for k in PREDICTION_FIELDS}) + "\n")
        elif path.suffix.lower() == ".csv":
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=PREDICTION_FIELDS)
                w.writeheader()
                for row in rows:
                    out = {k: row[k] for k in PREDICTION_FIELDS}
                    out["top_answers"] = json.dumps(row["top_answers"])
                    w.writerow(out)
        else:
            raise ValueError(f"{path}: predictions file must end in .csv or .jsonl")
    return path


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Read a predictions file written by ``write_predictions`` (CSV or JSONL)."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in open(path) if line.strip()]
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["correct"] = float(r["correct"])
            r["closed"] = r["closed"] in ("True", "true", "1")
    else:
        raise ValueError(f"{path}: predictions file must end in .csv or .jsonl")
    for i, r in enumerate(rows):
        missing = [k for k in ("question_id", "answer", "prediction", "correct") if k not in r]
        if missing:
            raise ValueError(f"{path}: row {i + 1} lacks {missing}")
    return rows


def compare_predictions(rows_a: list[dict], rows_b: list[dict], n_resamples: int = 1000,
                        seed: int = 0) -> dict:
    """Compare two runs on the questions both answered: accuracies with CIs and Mann-Whitney U.

    Per-question correctness (0/1) of run A and run B are the two samples of the test, as the
    MUSK paper compares models on PathVQA.
    """
    b_by_id = {str(r["question_id"]): r for r in rows_b}
    shared = [r for r in rows_a if str(r["question_id"]) in b_by_id]
    if not shared:
        raise ValueError("the two prediction files share no question_id")
    ca = np.array([float(r["correct"]) for r in shared])
    cb = np.array([float(b_by_id[str(r["question_id"])]["correct"]) for r in shared])
    closed = np.array([is_closed(r["answer"]) for r in shared])
    out = {"questions": len(shared), "only_in_a": len(rows_a) - len(shared),
           "only_in_b": len(rows_b) - len(shared)}
    for name, sel in (("overall", np.ones_like(closed)), ("closed", closed), ("open", ~closed)):
        if sel.any():
            out[name] = {
                "a": bootstrap_ci(np.mean, ca[sel], n_resamples=n_resamples, seed=seed).to_dict(),
                "b": bootstrap_ci(np.mean, cb[sel], n_resamples=n_resamples, seed=seed).to_dict(),
                **mann_whitney(ca[sel], cb[sel])}
    return out
