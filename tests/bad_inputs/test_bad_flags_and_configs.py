"""Configs, flags and output paths: refused up front, in one line naming the key / flag / path,
before any work and without writing anything."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from bad_files import TINY


@pytest.fixture
def cohort(tmp_path):
    """Six slides of random features (3 per class) and a cohort CSV naming them."""
    feats = tmp_path / "features"
    feats.mkdir()
    rows = ["patient_id,slide_id,label"]
    rng = np.random.default_rng(0)
    for i in range(6):
        with h5py.File(feats / f"s{i}.h5", "w") as f:
            f.create_dataset("features", data=rng.normal(size=(4, 8)).astype(np.float32))
            f.create_dataset("coords", data=np.zeros((4, 2), np.int64)).attrs["patch_size_level0"] = 224
        rows.append(f"p{i},s{i},{'a' if i % 2 else 'b'}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _mil_yaml(root, extra: str) -> str:
    path = root / "run.yaml"
    path.write_text(f"cohort: cohort.csv\nfeatures_dir: features\noutput_dir: out\nhidden_dim: 8\n"
                    f"attention_dim: 8\nbootstrap: 10\n{extra}")
    return str(path)


@pytest.mark.parametrize("extra, culprit", [
    ("epochs: ten\n", "'epochs' expects int"),
    ("epochs: 0\n", "'epochs' must be >= 1"),
    ("val_fraction: 1.5\n", "'val_fraction' must be < 1"),
    ("epochs: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    ("folds: 5\n", "lower `folds`"),                        # 3 slides per class cannot make 5 folds
    ("folds: 3\nval_fraction: 0.2\n", "`val_fraction`"),  # 4 training slides: 1 for validation < 2 classes
])
def test_mil_config_values_are_named(cohort, cli, extra, culprit):
    cli("mil", "train", _mil_yaml(cohort, extra), "--quiet").clear_error("run.yaml" if "fold" not in extra
                                                                        else "", culprit)
    assert not (cohort / "out" / "fold_0").exists()


def test_quoted_numbers_are_read_as_numbers(cohort):
    from openmusk.core.config import load_config
    from openmusk.mil.config import MilConfig

    assert load_config(MilConfig, _mil_yaml(cohort, "folds: '5'\n")).folds == 5


@pytest.mark.parametrize("text, culprit", [
    ("train:\n  total_steps: abc\n", "'total_steps' expects int"),
    ("train:\n  total_steps: 0\n", "'total_steps' must be >= 1"),
    ("data:\n  global_batch: -2\n", "'global_batch' must be >= 1"),
])
def test_pretrain_config_values_are_named(tmp_path, cli, text, culprit):
    (tmp_path / "stage.yaml").write_text(text)
    cli("pretrain", "contrastive", tmp_path / "stage.yaml").clear_error("stage.yaml", culprit)


def test_python_tags_in_vqa_configs_are_refused(tmp_path, cli):
    (tmp_path / "vqa.yaml").write_text("epochs: !!python/name:os.system\n")
    cli("vqa", "train", tmp_path / "vqa.yaml").clear_error("vqa.yaml", "not valid YAML")


@pytest.mark.parametrize("argv, flag", [
    (["embed", "images", "x.png", "--out", "o.h5", "--batch-size", "0"], "--batch-size"),
    (["slide", "extract", "slides", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["slide", "extract", "slides", "--out", "o", "--num-workers", "-1"], "--num-workers"),
    (["slide", "extract", "slides", "--out", "o", "--tile-size", "abc"], "--tile-size"),
    (["slide", "info", "x.svs", "--mpp", "-0.5"], "--mpp"),
    (["mil", "train", "run.yaml", "--epochs", "0"], "--epochs"),
])
def test_numeric_flags_are_checked_before_anything_runs(tmp_path, cli, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    res = cli(*argv)
    assert res.code == 2 and f"argument {flag}" in res.err and "Traceback" not in res.err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, cli, real_dir):
    image = real_dir / "hgsc_nest.jpg"
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    cli("embed", "images", image, "--out", tmp_path / "folder", "--weights", TINY).clear_error("folder", "existing folder")
    cli("slide", "extract", image, "--out", tmp_path / "afile" / "feats", "--weights", TINY,
        "--mpp", "0.5").clear_error("afile", "is a file")
    cli("slide", "heatmap", image, "--scores", tmp_path / "missing.csv", "--out", tmp_path / "h.png"
        ).clear_error("missing.csv")
    (tmp_path / "stage.yaml").write_text(f"output_dir: {tmp_path / 'afile' / 'run'}\n")
    cli("pretrain", "contrastive", tmp_path / "stage.yaml").clear_error("afile", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder", "stage.yaml"]
    assert list((tmp_path / "folder").iterdir()) == []


def test_the_mean_over_folds_interval_stays_in_the_metric_range():
    from openmusk.core.stats import mean_ci

    folds = [0.98, 0.20, 0.56]   # few, spread folds: the t-interval runs to [-0.39, 1.55]
    raw, clipped = mean_ci(folds), mean_ci(folds, bounds=(0.0, 1.0))
    assert raw.low < 0 and raw.high > 1
    assert (clipped.low, clipped.high) == (0.0, 1.0) and clipped.value == pytest.approx(raw.value)
    tight = mean_ci([0.80, 0.82, 0.81], bounds=(0.0, 1.0))
    assert (tight.low, tight.high) == (mean_ci([0.80, 0.82, 0.81]).low, mean_ci([0.80, 0.82, 0.81]).high)
