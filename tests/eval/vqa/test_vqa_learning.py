"""End to end on real tissue: `openmusk vqa train` learns the known-structure set, beats the
question-only control by a wide, significant margin, and `vqa eval` / `compare` / `ask` work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from openmusk.cli import main
from openmusk.eval.vqa import VQAPredictor, compare_predictions, open_vqa, read_predictions

pytestmark = pytest.mark.slow

CONFIG = """\
data: {data}
output_dir: {out}
model: musk_tiny_patch16_384
weights: null
img_size: 64
drop_path_rate: 0.0
question_only: {question_only}
max_len: 16
epochs: 8
batch_size: 16
accum_steps: 1
lr: 1.0e-3
head_lr_scale: 1.0
warmup_epochs: 1
freeze: {freeze}
last_k: 2
num_workers: 0
progress: false
"""


@pytest.fixture(scope="module")
def runs(vqa_table: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The image model and the question-only control, each trained through the CLI."""
    root = tmp_path_factory.mktemp("vqa_runs")
    out = {}
    for name, question_only in (("image", "false"), ("question_only", "true")):
        cfg = root / f"{name}.yaml"
        # the control's folder comes from --out-dir (the old spelling of --out), not the config
        cfg.write_text(CONFIG.format(data=vqa_table, out=name if name == "image" else "unused",
                                     question_only=question_only, freeze="last_k"))
        flags = [] if name == "image" else ["--out-dir", str(root / name)]
        assert main(["vqa", "train", str(cfg), *flags]) == 0
        out[name] = root / name     # output_dir "image" is relative to the YAML's folder
    assert not (root / "unused").exists()
    return out


def test_image_model_learns_and_beats_the_question_only_control(runs, vqa_table: Path) -> None:
    test = open_vqa(vqa_table, split="test")
    results, rows = {}, {}
    for name, folder in runs.items():
        history = json.loads((folder / "history.json").read_text())["history"]
        if name == "image":
            assert history[-1]["train_loss"] < 0.2 * history[0]["train_loss"]
        else:  # the question alone cannot beat the answers' entropy per type (0.83 nats here)
            assert history[-1]["train_loss"] > 0.75
        predictor = VQAPredictor.from_pretrained(folder)
        rows[name], errors = predictor.predict(test, progress=False)
        assert not errors
        results[name] = sum(r["correct"] for r in rows[name]) / len(rows[name])
    # balanced answers per question type: the best the question alone can do is
    # (15 + 10 + 15) / 90 = 0.444 (majority answer of each type)
    assert results["image"] >= 0.85, results
    assert results["question_only"] <= 0.5, results
    cmp = compare_predictions(rows["image"], rows["question_only"], n_resamples=200)
    assert cmp["overall"]["p_value"] < 1e-6
    for kind in ("closed", "open"):
        assert cmp[kind]["a"]["value"] > cmp[kind]["b"]["value"] + 0.25, (kind, cmp[kind])


def test_cli_eval_compare_and_ask(runs, vqa_table: Path, vqa_parquet: Path, tmp_path: Path,
                                  capsys) -> None:
    preds = {name: tmp_path / f"{name}.csv" for name in runs}
    assert main(["vqa", "eval", str(runs["question_only"]), str(vqa_table), "--predictions",
                 str(preds["question_only"]), "--workers", "0", "--resamples", "100", "--bf16"]) == 0
    err = capsys.readouterr().err   # the old spellings still work, each with a notice
    assert all(f"{old} is now spelled {new}" in err for old, new in (
        ("--workers", "--num-workers"), ("--resamples", "--n-resamples"), ("--bf16", "--precision bf16")))
    metrics = tmp_path / "metrics.json"
    assert main(["vqa", "eval", str(runs["image"]), str(vqa_table), "--predictions",
                 str(preds["image"]), "--metrics", str(metrics), "--compare", str(preds["question_only"]),
                 "--num-workers", "0", "--n-resamples", "100", "--device", "cpu", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "test: 90 questions on 90 images" in out and "mcnemar-exact" in out
    m = json.loads(metrics.read_text())
    rows = read_predictions(preds["image"])
    assert len(rows) == 90
    assert m["accuracy"]["overall"]["value"] == pytest.approx(sum(r["correct"] for r in rows) / 90)
    assert m["comparison"]["overall"]["p_value"] < 1e-6

    plot = tmp_path / "compare.png"
    # the same test questions as PathVQA parquet files (JPEG images): same model, same skill
    parquet_metrics = tmp_path / "parquet.json"
    assert main(["vqa", "eval", str(runs["image"]), str(vqa_parquet), "--metrics",
                 str(parquet_metrics), "--num-workers", "0", "--n-resamples", "100"]) == 0
    assert json.loads(parquet_metrics.read_text())["accuracy"]["overall"]["value"] >= 0.85
    capsys.readouterr()

    assert main(["vqa", "compare", str(preds["image"]), str(preds["question_only"]), "--plot",
                 str(plot)]) == 0
    assert "90 shared questions" in capsys.readouterr().out
    for png in (plot, runs["image"] / "history.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 300

    test_rows = [json.loads(line) for line in open(vqa_table)]
    for answer, flag in (("no", "--weights"), ("brown", "--model")):   # --model: the old spelling
        row = next(r for r in test_rows if r["split"] == "test" and r["answer"] == answer)
        assert main(["vqa", "ask", str(vqa_table.parent / row["image"]), row["question"],
                     flag, str(runs["image"]), "--topk", "3"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"Q: {row['question']}" and len(lines) == 4
        probs = [float(line.split()[0]) for line in lines[1:]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        predicted = next(r for r in rows if r["question_id"] == row["question_id"])
        assert lines[1].split(None, 1)[1] == predicted["prediction"]   # ask agrees with eval
    assert main(["vqa", "ask", str(tmp_path / "missing.png"), "is it?", "--weights",
                 str(runs["image"])]) == 2
    assert main(["vqa", "ask", str(tmp_path / "missing.png"), "is it?"]) == 2
    assert "--weights FOLDER" in capsys.readouterr().err
    assert main(["vqa", "eval", str(tmp_path), str(vqa_table)]) == 2
