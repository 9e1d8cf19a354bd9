"""Building blocks of mSTAR, each checked against an independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openmusk.mil.models import ABMIL, TransMIL
from openmusk.pretrain.mstar.cohort import load_cohort, read_rna_table
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig, load_config
from openmusk.pretrain.mstar.downstream import few_shot_slides
from openmusk.pretrain.mstar.genomic_survival import pathway_groups
from openmusk.pretrain.mstar.loss import TriModalClipLoss, pair_clip_loss
from openmusk.pretrain.mstar.model import aggregator_tokens
from openmusk.pretrain.mstar.rna import RnaPreprocessor
from openmusk.pretrain.mstar.stage1 import cross_modal_retrieval
from openmusk.pretrain.mstar.stage2 import ema_update
from openmusk.pretrain.mstar.synthetic import write_h5_features


def test_rna_preprocessor_matches_sklearn_and_follows_gene_names():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(2.0, 20.0, size=(40, 30)))
    genes = [f"G{i}" for i in range(30)]
    prep = RnaPreprocessor(n_genes=10).fit(counts[:30], genes)
    logged = np.log1p(counts)
    top = np.sort(np.argsort(-logged[:30].var(0))[:10])
    assert prep.genes == [genes[i] for i in top]
    expected = StandardScaler().fit(logged[:30, top]).transform(logged[30:, top])
    np.testing.assert_allclose(prep.transform(counts[30:], genes), expected, rtol=1e-5, atol=1e-5)
    perm = rng.permutation(30)  # columns in another order: matched by name
    np.testing.assert_allclose(prep.transform(counts[30:, perm], [genes[i] for i in perm]), expected,
                               rtol=1e-5, atol=1e-5)


def test_rna_bad_values_and_missing_genes_are_named(tmp_path):
    genes = ["A", "B", "C"]
    bad = np.array([[1, 2, 3], [4, -1, 6]])
    with pytest.raises(ValueError, match=r"row 1, gene 'B'"):
        RnaPreprocessor(n_genes=2).fit(bad, genes)
    prep = RnaPreprocessor(n_genes=3).fit(np.array([[1, 2, 3], [4, 5, 9]]), genes)
    with pytest.raises(ValueError, match="lacks 1 genes"):
        prep.transform(np.array([[1, 2]]), ["A", "B"])
    csv = tmp_path / "rna.csv"
    csv.write_text("case_id,A,B\nc1,1,2\nc2,3,oops\n")
    with pytest.raises(ValueError, match=r"row 3 \(case 'c2'\), gene 'B'"):
        read_rna_table(csv)


def _brute_clip(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    """Symmetric InfoNCE by explicit loops."""
    n = len(a)
    total = 0.0
    for i in range(n):
        row = [scale * float(a[i] @ b[j]) for j in range(n)]
        col = [scale * float(a[j] @ b[i]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def test_pair_clip_loss_uses_only_complete_pairs():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    b = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    present = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    scale = torch.tensor(math.log(10.0))
    got = pair_clip_loss(a, b, present, scale)
    keep = present.numpy()
    assert float(got) == pytest.approx(_brute_clip(a.numpy()[keep], b.numpy()[keep], 10.0), rel=1e-5)
    assert pair_clip_loss(a, b, torch.tensor([1, 0, 0, 0, 0, 0], dtype=torch.bool), scale) is None


def test_trimodal_loss_ignores_missing_modalities():
    g = torch.Generator().manual_seed(1)
    emb = {m: F.normalize(torch.randn(5, 4, generator=g), dim=-1).requires_grad_() for m in ("slide", "report", "rna")}
    present = {"slide": torch.tensor([1, 1, 1, 1, 1]).bool(), "report": torch.tensor([1, 1, 0, 1, 0]).bool(),
               "rna": torch.tensor([0, 1, 1, 1, 1]).bool()}
    scale = torch.tensor(0.0)
    loss, parts = TriModalClipLoss()(emb, present, scale)
    assert set(parts) == {"report-rna", "report-slide", "rna-slide"}
    manual = np.mean([
        _brute_clip(emb["report"].detach().numpy()[[1, 3]], emb["rna"].detach().numpy()[[1, 3]], 1.0),
        _brute_clip(emb["report"].detach().numpy()[[0, 1, 3]], emb["slide"].detach().numpy()[[0, 1, 3]], 1.0),
        _brute_clip(emb["rna"].detach().numpy()[[1, 2, 3, 4]], emb["slide"].detach().numpy()[[1, 2, 3, 4]], 1.0)])
    assert loss.item() == pytest.approx(manual, rel=1e-5)
    loss.backward()
    assert torch.all(emb["report"].grad[[2, 4]] == 0) and torch.all(emb["rna"].grad[0] == 0)
    assert emb["report"].grad[[0, 1, 3]].abs().sum() > 0


def test_cross_modal_retrieval_matches_brute_force():
    rng = np.random.default_rng(2)
    emb = {m: rng.normal(size=(12, 5)) for m in ("slide", "report")}
    emb["report"][:6] = emb["slide"][:6] + 0.01 * rng.normal(size=(6, 5))
    present = {"slide": np.ones(12, bool), "report": np.array([True] * 10 + [False] * 2)}
    res = cross_modal_retrieval(emb, present, ks=(1, 3))
    rows = np.arange(10)
    for k in (1, 3):
        hits = 0
        for i in rows:
            scores = [(emb["slide"][i] @ emb["report"][j], j) for j in rows]
            better = sum(1 for s, j in scores if s > emb["slide"][i] @ emb["report"][i])
            hits += better < k
        assert res["slide->report"][f"R@{k}"] == pytest.approx(hits / 10)
    assert res["slide->report"]["n"] == 10 and res["slide->report"]["chance@3"] == pytest.approx(0.3)


def test_transmil_tokens_are_the_modules_own_final_tokens():
    torch.manual_seed(0)
    agg = TransMIL(16, 32).eval()
    x = torch.randn(23, 16)
    captured = {}

    def hook(module, inputs, output):
        captured["out"] = output.clone()

    handle = agg.norm.register_forward_hook(hook)
    with torch.no_grad():
        agg(x)
    handle.remove()
    with torch.no_grad():
        tokens = aggregator_tokens(agg, x)
    torch.testing.assert_close(tokens, captured["out"][0, 1:24])
    x2 = x.clone()
    x2[5] += 3.0  # TransMIL tokens carry slide context: another patch changes patch 0's token
    with torch.no_grad():
        assert not torch.allclose(aggregator_tokens(agg, x2)[0], tokens[0])
    abmil = ABMIL(16, 32).eval()
    with torch.no_grad():
        torch.testing.assert_close(aggregator_tokens(abmil, x), abmil.fc(x))


def test_ema_update_formula():
    torch.manual_seed(0)
    s, t = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.9 * pt.detach().clone() + 0.1 * ps.detach() for pt, ps in zip(t.parameters(), s.parameters())]
    ema_update(t, s, 0.9)
    for p, e in zip(t.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_few_shot_learns_planted_classes_and_not_shuffled_ones():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 8)) + 4.0 * y[:, None] * np.eye(8)[0]
    real = few_shot_slides(x, y, k=4, seeds=range(5))
    assert real["auc_mean"]["value"] > 0.9
    shuffled = few_shot_slides(x, rng.permutation(y), k=4, seeds=range(5))
    assert abs(shuffled["auc_mean"]["value"] - 0.5) < 0.2
    proto = few_shot_slides(x, y, k=4, seeds=[3], method="prototype")
    # brute force: nearest class mean by cosine on the seed's own split
    r = np.random.default_rng(3)
    train = np.concatenate([r.choice(np.flatnonzero(y == c), 4, replace=False) for c in (0, 1)])
    test = np.setdiff1d(np.arange(60), train)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    m = np.stack([xn[train][y[train] == c].mean(0) for c in (0, 1)])
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    pred = (xn[test] @ m.T).argmax(1)
    from sklearn.metrics import balanced_accuracy_score
    assert proto["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(y[test], pred))


def test_cohort_skips_unreadable_feature_files_and_names_them(tmp_path):
    write_h5_features(tmp_path / "a.h5", np.ones((4, 3)), np.zeros((4, 2)))
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    (tmp_path / "t.csv").write_text("case_id,features,report\nA,a.h5,some text\nB,broken.h5,other text\n")
    cohort = load_cohort(tmp_path / "t.csv")
    assert [p.case_id for p in cohort.patients] == ["A", "B"]
    assert cohort.patients[1].feature_paths == [] and cohort.feature_dim == 3
    assert len(cohort.problems) == 1 and "broken.h5" in cohort.problems[0] and "t.csv:3" in cohort.problems[0]
    (tmp_path / "bad.csv").write_text("case_id,report\nA,x\n")
    with pytest.raises(ValueError, match="missing column 'features'"):
        load_cohort(tmp_path / "bad.csv")


def test_config_rejects_unknown_keys_and_resolves_paths(tmp_path):
    (tmp_path / "c.yaml").write_text("table: cohort.csv\nout_dir: out\nepochs: 3\n")
    cfg = load_config(AggregatorPretrainConfig, tmp_path / "c.yaml")
    assert cfg.table == str(tmp_path / "cohort.csv") and cfg.epochs == 3
    (tmp_path / "d.yaml").write_text("table: a.csv\nout_dir: o\nepoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\]"):
        load_config(AggregatorPretrainConfig, tmp_path / "d.yaml")


def test_pathway_groups_names_a_pathway_without_genes():
    assert pathway_groups(["a", "b", "c"], {"p1": ["c", "a", "zz"]}) == {"p1": [2, 0]}
    with pytest.raises(ValueError, match="pathway 'p2'"):
        pathway_groups(["a"], {"p2": ["x", "y"]})
