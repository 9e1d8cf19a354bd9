"""MOTCat and CMTA (openmusk.mil.genomic_models) learn a genomic survival signal through mil's CV, a
shuffled-genomics control does not; `openmusk mil train` runs them from a genomics + signatures table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lifelines.utils import concordance_index

from openmusk.mil.genomic import cross_validate_genomic, read_signatures, signature_groups
from openmusk.mil.genomic_models import CMTA, MOTCat, uot_plan
from openmusk.mil.trainer import FitConfig
from openmusk.pretrain.mstar.synthetic import make_genomic_survival_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_genomic_survival_cohort(tmp_path_factory.mktemp("surv"), n_patients=160, n_patches=8, dim=8,
                                        n_genes=12, n_groups=3, effect=3.0, seed=0)


def _cv(cohort, model, out, omics=None):
    torch.manual_seed(0)
    res = cross_validate_genomic(cohort["records"], omics or cohort["omics"], cohort["groups"], str(out), model=model,
                                 config=FitConfig(epochs=2, lr=2e-2, batch_size=8, device="cpu"), folds=2, dim=16,
                                 dropout=0.0, val_fraction=0.0, n_resamples=20, log=lambda s: None)
    oof = res["oof"]
    rank = oof.groupby("fold")["risk"].rank(pct=True)  # folds' risk scales differ: pool within-fold ranks (as mil)
    return concordance_index(oof["time"], -rank, oof["event"])


@pytest.mark.slow
def test_motcat_and_cmta_learn_and_shuffled_genomics_do_not(cohort, tmp_path):
    for model in ("motcat", "cmta"):
        c = _cv(cohort, model, tmp_path / model)
        # cohort seeds 0, 1, 2: MOTCat 0.69, 0.64, 0.77; CMTA 0.79, 0.58, 0.72; CMTA shuffled 0.52, 0.54, 0.48
        assert c > 0.57, (model, c)
    ids = list(cohort["omics"])
    perm = np.random.default_rng(5).permutation(len(ids))
    shuffled = {pid: cohort["omics"][ids[j]] for pid, j in zip(ids, perm)}
    c = _cv(cohort, "cmta", tmp_path / "shuffled", shuffled)
    assert abs(c - 0.5) < 0.1, c


def test_uot_plan_is_pots_unbalanced_sinkhorn_and_balanced_in_the_limit():
    torch.manual_seed(0)
    a, b = torch.randn(3, 5), torch.randn(7, 5)
    plan = uot_plan(a, b, reg=0.1, reg_m=1e4)  # huge marginal penalty: (nearly) balanced transport
    np.testing.assert_allclose(plan.sum(1).numpy(), np.full(3, 1 / 3), atol=2e-3)
    np.testing.assert_allclose(plan.sum(0).numpy(), np.full(7, 1 / 7), atol=2e-3)
    # an independent entropic-OT check: cheapest pairs carry the most mass
    sa, sb = a - a.min(1, keepdim=True).values, b - b.min(1, keepdim=True).values
    cost = torch.cdist(sa, sb) ** 2
    assert (plan.argmax(1) == cost.argmin(1)).float().mean() >= 2 / 3


@pytest.mark.parametrize("cls", [MOTCat, CMTA])
def test_models_ignore_padding_and_check_genomics(cls):
    torch.manual_seed(0)
    net = cls(6, {"p0": [0, 1], "p1": [2, 3, 4]}, n_bins=4, dim=16, heads=2).eval()
    bag, omics = torch.randn(2, 7, 6), torch.randn(2, 5)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out = net({"features": bag, "mask": mask, "omics": omics})
    bag2 = bag.clone()
    bag2[1, 5:] += 10.0
    torch.testing.assert_close(net({"features": bag2, "mask": mask, "omics": omics})["logits"], out["logits"])
    alone = net({"features": bag[1:, :5], "omics": omics[1:]})["logits"]  # the unpadded bag on its own
    torch.testing.assert_close(alone[0], out["logits"][1], rtol=1e-4, atol=1e-5)
    if cls is CMTA:
        assert out["aux_loss"].ndim == 0 and out["aux_loss"] > 0
    with pytest.raises(ValueError, match="genomic input must be"):
        net.hazard_logits(bag, torch.randn(2, 4), mask)


def test_signatures_in_mcat_layout_group_suffixed_columns(tmp_path):
    sig = tmp_path / "signatures.csv"
    sig.write_text("Tumor Suppressor Genes,Oncogenes\nTP53,MYC\nPTEN,\n")
    groups = read_signatures(sig)
    assert groups == {"Tumor Suppressor Genes": ["TP53", "PTEN"], "Oncogenes": ["MYC"]}
    cols = ["TP53_mut", "TP53_cnv", "MYC_rnaseq", "PTEN", "OTHER"]
    assert signature_groups(cols, groups) == {"Tumor Suppressor Genes": [0, 1, 3], "Oncogenes": [2]}
    with pytest.raises(ValueError, match="'Oncogenes'"):
        signature_groups(["TP53"], groups)


def test_mil_train_runs_genomic_models_from_the_cli(cohort, tmp_path, capsys):
    from openmusk.cli import main

    recs = cohort["records"][:40]
    rows = [{"patient_id": r.patient_id, "slide_id": r.slides[0], "time": r.time, "event": r.event} for r in recs]
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    genes = [f"G{i}_rnaseq" for i in range(12)]
    pd.DataFrame([[r.patient_id, *cohort["omics"][r.patient_id]] for r in recs],
                 columns=["patient_id", *genes]).to_csv(tmp_path / "genomics.csv", index=False)
    sig = {name: [f"G{i}" for i in idx] for name, idx in cohort["groups"].items()}
    pd.DataFrame({k: pd.Series(v) for k, v in sig.items()}).to_csv(tmp_path / "signatures.csv", index=False)
    from pathlib import Path
    cfg = {"cohort": "cohort.csv", "features_dir": str(Path(recs[0].feature_files[0]).parent), "task": "survival",
           "model": "cmta", "genomics": "genomics.csv", "signatures": "signatures.csv", "folds": 2, "epochs": 1,
           "fusion_hidden": 16, "batch_size": 4, "bootstrap": 10, "device": "cpu", "output_dir": "out"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["mil", "train", str(tmp_path / "cfg.yaml"), "--quiet"]) == 0
    metrics = yaml.safe_load((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["groups"] == {k: [f"G{i}_rnaseq" for i in idx] for k, idx in cohort["groups"].items()}
    assert len(metrics["summary"]["per_fold"]) == 2
    # slide-only commands refuse a genomic run with a message naming the model
    assert main(["mil", "predict", str(tmp_path / "out"), "--quiet"]) != 0
    assert "does not support model 'cmta'" in capsys.readouterr().err
