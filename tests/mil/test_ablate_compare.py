"""`mil ablate` on a cohort whose label needs both the slide and the report: both > either, with the
paired DeLong p-value checked against an independent computation; `mil compare` from the CLI;
`mil predict` warns when it predicts training patients."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from openmusk.cli import main
from openmusk.mil import MilConfig, ablate, predict

REPORT = {0: "Grade one.", 1: "Grade two carcinoma, focally invasive.", 2: "High grade carcinoma with necrosis and many mitoses."}


def delong_by_kernel(y, a, b):
    """DeLong et al. (1988) written from the Mann-Whitney kernel psi(x, y) = [x > y] + 0.5 [x == y]."""
    from scipy.stats import norm

    y = np.asarray(y).astype(bool)
    v10, v01, aucs = [], [], []
    for s in (np.asarray(a, float), np.asarray(b, float)):
        pos, neg = s[y][:, None], s[~y][None, :]
        psi = (pos > neg) + 0.5 * (pos == neg)
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = y.sum(), (~y).sum()
    var = (np.var(v10[0] - v10[1], ddof=1) / m) + (np.var(v01[0] - v01[1], ddof=1) / n)
    z = (aucs[0] - aucs[1]) / np.sqrt(var)
    return aucs[0] - aucs[1], 2 * norm.sf(abs(z))


@pytest.fixture(scope="module")
def split_signal(tmp_path_factory):
    """36 patients: a slide grade za (feature 0 of every tile) and a report grade zb, each 0/1/2;
    label = za + zb >= 2. Each modality alone can reach AUC 0.833 (15/18 pairs), both 1.0."""
    root = tmp_path_factory.mktemp("ablate")
    (root / "features").mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(36):
        za, zb = i % 3, (i // 3) % 3
        x = rng.normal(size=(10, 8)).astype(np.float32)
        x[:, 0] += 1.5 * za
        with h5py.File(root / "features" / f"S{i:02d}.h5", "w") as f:
            f.create_dataset("features", data=x)
            f.create_dataset("coords", data=np.stack([np.arange(10), np.zeros(10)], 1).astype(np.int64))
        rows.append({"patient_id": f"P{i:02d}", "slide_id": f"S{i:02d}", "label": ("no", "yes")[int(za + zb >= 2)],
                     "report": REPORT[zb]})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the random report encoder is drawn from the global generator
    cfg = MilConfig(cohort=str(root / "cohort.csv"), features_dir=str(root / "features"),
                    output_dir=str(root / "ablation"), model="meanpool", hidden_dim=16, fusion_hidden=16,
                    report_model="musk_tiny_patch16_32", report_weights=None, epochs=8, patience=50, folds=3,
                    bootstrap=20, batch_size=4, lr=2e-2, dropout=0.0, val_fraction=0.0, device="cpu", tile_size=16)
    return root, ablate(cfg, log=lambda s: None, progress=False)


def test_both_beat_either_and_the_paired_pvalue_is_delongs(split_signal):
    root, res = split_signal
    assert res["same_folds"]
    table = pd.read_csv(root / "ablation" / "ablation.csv").set_index("row")
    auc = table["pooled"]
    print(f"pooled AUC image {auc['image']:.3f} text {auc['text']:.3f} both {auc['both']:.3f}; "
          f"p(both-image) {table.loc['both - image', 'pvalue']:.3g} p(both-text) {table.loc['both - text', 'pvalue']:.3g}")
    assert auc["both"] > max(auc["image"], auc["text"]) + 0.05
    assert min(auc["image"], auc["text"]) > 0.65 and max(auc["image"], auc["text"]) < 0.9
    oof = {m: pd.read_csv(root / "ablation" / m / "oof_predictions.csv", dtype={"id": str}).set_index("id")
           for m in ("image", "text", "both")}
    ids = oof["both"].index
    for other in ("image", "text"):
        diff, p = delong_by_kernel(oof["both"].loc[ids, "label"], oof["both"].loc[ids, "prob_yes"],
                                   oof[other].loc[ids, "prob_yes"])
        assert table.loc[f"both - {other}", "diff"] == pytest.approx(diff, abs=1e-9)
        assert table.loc[f"both - {other}", "pvalue"] == pytest.approx(p, rel=1e-6)
    for name in ("ablation.png", "report.html", "compare_both_vs_image/forest.png"):
        assert (root / "ablation" / name).stat().st_size > 1000


def test_compare_cli_and_in_sample_warning(split_signal, capsys):
    root, res = split_signal
    run = root / "ablation"
    assert main(["mil", "compare", str(run / "both"), str(run / "text"), "--out", str(root / "cmp"),
                 "--bootstrap", "20"]) == 0
    got = pd.read_json(root / "cmp" / "compare.json", typ="series")
    assert got["overall"]["pvalue"] == pytest.approx(res["comparisons"]["both_vs_text"]["overall"]["pvalue"])
    assert "DeLong p =" in capsys.readouterr().out
    lines: list[str] = []
    predict(run / "text", out_dir=root / "pred", log=lines.append, progress=False)
    assert any("in-sample prediction: 36 of 36 patients (the training cohort" in line for line in lines)
    new = pd.read_csv(root / "cohort.csv").head(6).assign(patient_id=lambda d: "new" + d["patient_id"])
    new.to_csv(root / "new.csv", index=False)
    lines.clear()
    predict(run / "text", cohort=str(root / "new.csv"), out_dir=root / "pred_new", log=lines.append, progress=False)
    assert not any("in-sample" in line for line in lines)
    with pytest.raises(FileNotFoundError, match="finished `mil train` run"):
        from openmusk.mil import compare_runs
        compare_runs(run / "both", root / "features")
