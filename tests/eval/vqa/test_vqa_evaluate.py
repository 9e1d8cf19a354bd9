"""VQA accuracy, bootstrap CIs, predictions files and run comparison, against independent sums."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from openmusk.eval.vqa import (accuracy_report, compare_predictions, exact_match, read_predictions,
                               vqa_accuracy, write_predictions)


def test_exact_match_accuracy_hand_worked() -> None:
    preds = ["Yes", "two", "the liver", "kidney", "No."]
    refs = ["yes", "2", "Liver", "lung", "yes"]
    assert exact_match(preds, refs).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert vqa_accuracy(preds, refs) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="4 predictions for 5"):
        exact_match(preds[:4], refs)


def test_accuracy_report_splits_closed_and_open() -> None:
    rng = np.random.default_rng(0)
    correct = (rng.random(400) < 0.7).astype(float)
    closed = rng.random(400) < 0.5
    report = accuracy_report(correct, closed, n_resamples=500)
    assert report["overall"].value == pytest.approx(correct.mean())
    assert report["closed"].value == pytest.approx(correct[closed].mean())
    assert report["open"].value == pytest.approx(correct[~closed].mean())
    assert report["closed"].n == int(closed.sum())
    # the percentile bootstrap of a mean agrees with the normal interval p +- 1.96 sqrt(p(1-p)/n)
    for name, sel in (("overall", np.ones(400, bool)), ("closed", closed)):
        p, n = correct[sel].mean(), sel.sum()
        half = 1.96 * np.sqrt(p * (1 - p) / n)
        assert report[name].low == pytest.approx(p - half, abs=0.02)
        assert report[name].high == pytest.approx(p + half, abs=0.02)
    assert "open" not in accuracy_report([1.0, 0.0], [True, True], n_resamples=10)


def _rows(correct: list[float], prefix: str = "q") -> list[dict]:
    return [{"question_id": f"{prefix}{i}", "image_id": f"img{i // 2}", "question": "is it?",
             "answer": "yes" if i % 2 else "liver", "prediction": "yes" if c else "no",
             "probability": 0.9, "closed": bool(i % 2), "correct": c,
             "top_answers": [["yes", 0.9], ["no", 0.1]]} for i, c in enumerate(correct)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predictions_round_trip(tmp_path, suffix: str) -> None:
    rows = _rows([1.0, 0.0, 1.0])
    path = write_predictions(tmp_path / f"pred{suffix}", rows)
    back = read_predictions(path)
    assert [r["question_id"] for r in back] == ["q0", "q1", "q2"]
    assert [r["correct"] for r in back] == [1.0, 0.0, 1.0]
    assert [r["closed"] for r in back] == [False, True, False]
    with pytest.raises(ValueError, match="must end in"):
        write_predictions(tmp_path / "pred.txt", rows)


def test_compare_runs_mann_whitney_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.8).astype(float).tolist()
    b = (rng.random(200) < 0.6).astype(float).tolist()
    rows_b = _rows(b)[::-1] + _rows([1.0], prefix="extra")     # order must not matter
    c = compare_predictions(_rows(a), rows_b, n_resamples=200, test="mann-whitney")
    ref = stats.mannwhitneyu(a, b, alternative="two-sided")
    assert c["questions"] == 200 and c["only_in_b"] == 1
    assert c["overall"]["p_value"] == pytest.approx(ref.pvalue)
    assert c["overall"]["statistic"] == pytest.approx(ref.statistic)
    assert c["overall"]["a"]["value"] == pytest.approx(np.mean(a))
    closed = np.arange(200) % 2 == 1
    ref_closed = stats.mannwhitneyu(np.array(a)[closed], np.array(b)[closed], alternative="two-sided")
    assert c["closed"]["p_value"] == pytest.approx(ref_closed.pvalue)
    same = compare_predictions(_rows(a), _rows(a), n_resamples=10)
    assert same["overall"]["p_value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="share no question_id"):
        compare_predictions(_rows(a), _rows(b, prefix="z"))


def test_compare_runs_default_is_exact_mcnemar_like_statsmodels() -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(2)
    a = rng.random(150) < 0.7
    b = np.where(rng.random(150) < 0.15, ~a, a)
    c = compare_predictions(_rows(a.astype(float).tolist()), _rows(b.astype(float).tolist()),
                            n_resamples=200)
    table = [[(a & b).sum(), (a & ~b).sum()], [(~a & b).sum(), (~a & ~b).sum()]]
    assert c["overall"]["test"] == "mcnemar-exact"
    assert c["overall"]["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert c["overall"]["diff"] == pytest.approx(a.mean() - b.mean())
    assert c["overall"]["low"] <= c["overall"]["diff"] <= c["overall"]["high"]
