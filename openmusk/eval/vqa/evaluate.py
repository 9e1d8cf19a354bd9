"""VQA metrics: exact-match accuracy (overall, closed yes/no, open) with bootstrap 95% CIs, the
predictions file, and the comparison of two runs on the same questions: by default an exact
McNemar test on per-question correctness with a paired-bootstrap CI of the accuracy difference;
``test="mann-whitney"`` keeps the MUSK paper's unpaired Mann-Whitney U (it ignores the pairing).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from openmusk.eval.vqa.answers import is_closed, normalize_answer
from openmusk.core.io import atomic_path
from openmusk.core.stats import (Estimate, bootstrap_ci, mann_whitney, mcnemar_exact,
                                 paired_bootstrap_diff)

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
    from openmusk.core.io import read_text

    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e})") from None
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    else:
        raise ValueError(f"{path}: predictions file must end in .csv or .jsonl")
    for i, r in enumerate(rows):
        missing = [k for k in ("question_id", "answer", "prediction", "correct") if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"{path}: row {i + 1} lacks {missing} (write it with `openmusk vqa eval`)")
        try:
            r["correct"] = float(r["correct"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: row {i + 1}: 'correct' must be a number, got {r['correct']!r}") from None
        if isinstance(r.get("closed"), str):
            r["closed"] = r["closed"] in ("True", "true", "1")
    return rows


COMPARE_TESTS = ("mcnemar", "mann-whitney")


def compare_predictions(rows_a: list[dict], rows_b: list[dict], n_resamples: int = 1000,
                        seed: int = 0, test: str = "mcnemar") -> dict:
    """Compare two runs on the questions both answered: accuracies with CIs and a paired test.

    ``test="mcnemar"`` (default): exact McNemar on the per-question correctness pairs, and the
    paired-bootstrap 95% CI of the accuracy difference (``diff``, ``low``, ``high``).
    ``test="mann-whitney"``: the MUSK paper's PathVQA comparison, which treats the two runs'
    correctness as independent samples although they answer the same questions.
    """
    if test not in COMPARE_TESTS:
        raise ValueError(f"compare test must be one of {COMPARE_TESTS}, got {test!r}")
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
                **(mcnemar_exact(ca[sel], cb[sel]) if test == "mcnemar"
                   else mann_whitney(ca[sel], cb[sel]))}
            out[name]["p_value"] = out[name].get("pvalue", out[name].get("p_value"))
            boot = paired_bootstrap_diff(np.mean, (ca[sel],), (cb[sel],), n_resamples=n_resamples,
                                         seed=seed)
            out[name].update(diff=boot["diff"], low=boot["low"], high=boot["high"])
    return out
