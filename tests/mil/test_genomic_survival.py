"""MCAT and PORPOISE (openmusk.mil.genomic) learn a genomic survival signal through the mil CV machinery."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lifelines.utils import concordance_index

from openmusk.mil.genomic import MCAT, PORPOISE, cross_validate_genomic, pathway_groups
from openmusk.mil.trainer import FitConfig
from openmusk.pretrain.mstar.synthetic import make_genomic_survival_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The synthetic cohort (BagDataset keeps each bag in memory after its first read)."""
    return make_genomic_survival_cohort(tmp_path_factory.mktemp("surv"), n_patients=200, n_genes=24,
                                        n_groups=4, effect=2.0, seed=0)


def _cv(cohort, model, out, omics=None):
    torch.manual_seed(0)
    res = cross_validate_genomic(cohort["records"], omics or cohort["omics"], cohort["groups"], str(out),
                                 model=model, config=FitConfig(epochs=20, lr=1e-3, batch_size=8, patience=5,
                                                                 device="cpu"),
                                 folds=3, dim=32, log=lambda s: None)
    oof = res["oof"]
    return res, concordance_index(oof["time"], -oof["risk"], oof["event"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mcat", "porpoise"])
def test_genomic_models_reach_high_c_index(cohort, model, tmp_path):
    res, c_lifelines = _cv(cohort, model, tmp_path)
    assert c_lifelines > 0.6, c_lifelines
    per_fold = res["summary"]["per_fold"]
    assert len(per_fold) == 3 and min(per_fold) > 0.55
    for fold in range(3):  # the mil metrics agree with lifelines on each fold's predictions
        part = res["oof"][res["oof"]["fold"] == fold]
        assert per_fold[fold] == pytest.approx(concordance_index(part["time"], -part["risk"], part["event"]), abs=1e-6)


@pytest.mark.slow
def test_shuffled_genomics_stay_at_chance(cohort, tmp_path):
    ids = list(cohort["omics"])
    perm = np.random.default_rng(5).permutation(len(ids))
    shuffled = {pid: cohort["omics"][ids[j]] for pid, j in zip(ids, perm)}
    _, c = _cv(cohort, "porpoise", tmp_path, shuffled)
    assert abs(c - 0.5) < 0.1, c


def test_models_route_genomics_by_pathway():
    torch.manual_seed(0)
    groups = {"p0": [0, 1], "p1": [2, 3, 4]}
    mcat = MCAT(6, groups, n_bins=4, dim=16).eval()
    porpoise = PORPOISE(6, 5, n_bins=4, dim=16).eval()
    bag, omics = torch.randn(2, 7, 6), torch.randn(2, 5)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    for net in (mcat, porpoise):
        out = net({"features": bag, "mask": mask, "omics": omics})["logits"]
        # padding is ignored: changing padded patches leaves bag 1's output unchanged
        bag2 = bag.clone()
        bag2[1, 5:] += 10.0
        torch.testing.assert_close(net({"features": bag2, "mask": mask, "omics": omics})["logits"][1], out[1])
        with pytest.raises(ValueError, match="genomic input must be"):
            net.hazard_logits(bag, torch.randn(2, 4), mask)
    with pytest.raises(ValueError, match="needs genomic data"):
        mcat({"features": bag, "mask": mask})


def test_pathway_groups_names_a_pathway_without_genes():
    assert pathway_groups(["a", "b", "c"], {"p1": ["c", "a", "zz"]}) == {"p1": [2, 0]}
    with pytest.raises(ValueError, match="pathway 'p2'"):
        pathway_groups(["a"], {"p2": ["x", "y"]})
