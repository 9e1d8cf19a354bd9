"""Kill-and-resume for the long jobs not covered elsewhere: `mil train` (finished folds kept, the
rerun bit-identical to an uninterrupted run) and `eval run` (finished cells kept, the rest run).

Covered elsewhere: slide extract (tests/slide/test_slide_extract.py::test_kill_halfway_then_resume),
vqa train (tests/eval/vqa/test_vqa_train.py::test_resume_after_interruption_gives_the_same_model),
mstar stage 1 (tests/pretrain/mstar/test_mstar_stage1.py::test_resume_continues_from_the_saved_epoch),
the pretraining data position (tests/pretrain/test_pretrain_stream.py::test_resume_from_a_position_continues_exactly).
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def cohort(tmp_path):
    """12 slides of 6 random tiles, class signal in feature 0, and a 3-fold run config."""
    feats = tmp_path / "features"
    feats.mkdir()
    rng = np.random.default_rng(0)
    rows = ["patient_id,slide_id,label"]
    for i in range(12):
        x = rng.normal(size=(6, 8)).astype(np.float32)
        x[:, 0] += 2.0 * (i % 2)
        with h5py.File(feats / f"s{i}.h5", "w") as f:
            f.create_dataset("features", data=x)
            f.create_dataset("coords", data=np.zeros((6, 2), np.int64)).attrs["patch_size_level0"] = 224
        rows.append(f"p{i},s{i},{'a' if i % 2 else 'b'}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _run_yaml(root, out: str) -> str:
    path = root / f"{out}.yaml"
    path.write_text(f"cohort: cohort.csv\nfeatures_dir: features\noutput_dir: {out}\nhidden_dim: 8\n"
                    "attention_dim: 8\nbootstrap: 10\nepochs: 3\nfolds: 3\nval_fraction: 0.25\n")
    return str(path)


def test_mil_train_killed_in_a_fold_resumes_bit_identically(cohort, cli, monkeypatch):
    import openmusk.mil.cv as cv

    assert cli("mil", "train", _run_yaml(cohort, "straight"), "--quiet").code == 0
    real_fit, calls = cv.fit, []

    def killed_in_fold_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(cv, "fit", killed_in_fold_1)
    res = cli("mil", "train", _run_yaml(cohort, "resumed"), "--quiet")
    assert res.code == 130 and "rerun the same command to resume" in res.err
    out = cohort / "resumed"
    assert (out / "fold_0" / "metrics.json").is_file() and not (out / "fold_1").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]          # no temp file left
    monkeypatch.setattr(cv, "fit", real_fit)
    res = cli("mil", "train", _run_yaml(cohort, "resumed"), "--quiet")
    assert res.code == 0 and res.out.count("finished earlier, skipped") == 1
    for name in ("oof_predictions.csv", "fold_1/predictions.csv", "fold_2/model.safetensors"):
        assert (out / name).read_bytes() == (cohort / "straight" / name).read_bytes(), name
    from openmusk.core.io import read_json

    a, b = read_json(cohort / "straight" / "metrics.json"), read_json(out / "metrics.json")
    assert a["summary"] == b["summary"] and a["pooled"] == b["pooled"]


def test_eval_run_killed_in_a_cell_keeps_finished_cells(tmp_path, cli, monkeypatch):
    import openmusk.eval.runner as runner

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        for label, colour in (("pink", (230, 120, 170)), ("purple", (110, 60, 150))):
            d = tmp_path / "data" / split / label
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(rng.normal(colour, 20, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i}.png")
    (tmp_path / "tiles.yaml").write_text("name: tiles\nformat: folder\nclasses: [pink, purple]\n"
                                         "splits: {train: train, test: test}\ntasks: [linear_probe, knn]\n")
    (tmp_path / "run.yaml").write_text(
        "output_dir: results\nbatch_size: 8\nnum_workers: 0\nn_resamples: 20\nknn_k: 3\n"
        "models: [{name: colours, kind: color_stats, kwargs: {img_size: 32}}]\n"
        "datasets: [{spec: tiles.yaml, root: data}]\n")
    real, calls = runner.write_json, []

    def killed_at_second_cell(path, obj, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, obj, *args, **kwargs)

    monkeypatch.setattr(runner, "write_json", killed_at_second_cell)
    assert cli("eval", "run", tmp_path / "run.yaml").code == 130
    done = sorted(p.relative_to(tmp_path / "results").as_posix() for p in (tmp_path / "results").rglob("*.json"))
    assert len(done) == 1 and not [p for p in (tmp_path / "results").rglob(".*")]
    first = (tmp_path / "results" / done[0]).read_bytes()
    monkeypatch.setattr(runner, "write_json", real)
    assert cli("eval", "run", tmp_path / "run.yaml").code == 0
    summary = runner.read_json(tmp_path / "results" / "run_summary.json") if hasattr(runner, "read_json") \
        else __import__("json").loads((tmp_path / "results" / "run_summary.json").read_text())
    assert [str(tmp_path / "results" / done[0])] == summary["skipped"]
    assert (tmp_path / "results" / done[0]).read_bytes() == first
    assert len(list((tmp_path / "results").rglob("*.json"))) == 3   # two cells + run summary
