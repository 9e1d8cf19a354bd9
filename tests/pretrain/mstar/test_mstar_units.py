"""Building blocks of mSTAR, each checked against an independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openmusk.cli import main
from openmusk.core.config import ConfigError, load_config
from openmusk.mil.models import ABMIL, TransMIL
from openmusk.pretrain.mstar.cohort import read_pretrain_cohort, read_rna_table
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig, SelfTaughtConfig
from openmusk.pretrain.mstar.downstream import few_shot_slides
from openmusk.pretrain.mstar.loss import TriModalClipLoss, pair_clip_loss
from openmusk.pretrain.mstar.model import aggregator_tokens
from openmusk.pretrain.mstar.rna import RnaPreprocessor
from openmusk.pretrain.mstar.stage1 import retrieval_between_modalities
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


def test_retrieval_between_modalities_matches_brute_force():
    rng = np.random.default_rng(2)
    emb = {m: rng.normal(size=(12, 5)) for m in ("slide", "report")}
    emb["report"][:6] = emb["slide"][:6] + 0.01 * rng.normal(size=(6, 5))
    present = {"slide": np.ones(12, bool), "report": np.array([True] * 10 + [False] * 2)}
    res = retrieval_between_modalities(emb, present, ks=(1, 3))
    rows = np.arange(10)
    for k in (1, 3):
        hits = 0
        for i in rows:
            scores = [(emb["slide"][i] @ emb["report"][j], j) for j in rows]
            better = sum(1 for s, j in scores if s > emb["slide"][i] @ emb["report"][i])
            hits += better < k
        assert res["slide->report"][f"R@{k}"] == pytest.approx(hits / 10)
    assert res["slide->report"]["n"] == 10 and res["slide->report"]["chance@3"] == pytest.approx(0.3)


def test_aggregator_tokens_are_the_aggregators_own_tokens():
    torch.manual_seed(0)
    x = torch.randn(23, 16)
    for agg in (TransMIL(16, 32).eval(), ABMIL(16, 32).eval()):
        with torch.no_grad():
            torch.testing.assert_close(aggregator_tokens(agg, x), agg.tokens(x))
    with pytest.raises(TypeError, match="no tokens"):
        aggregator_tokens(torch.nn.Linear(16, 4), x)


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
    (tmp_path / "t.csv").write_text("case_id,features,report,split\nA,a.h5,some text,test\nB,broken.h5,other text,\n"
                                    "C,,only a report,\n")
    patients, dim, problems = read_pretrain_cohort(tmp_path / "t.csv", val_fraction=0.0)
    assert [p.patient_id for p in patients] == ["A", "B", "C"] and dim == 3
    assert patients[0].feature_files == [str(tmp_path / "a.h5")] and patients[0].split == "test"
    assert patients[1].feature_files == [] and patients[2].feature_files == []  # kept for their reports
    assert [p.split for p in patients[1:]] == ["train", "train"]  # no split given, val_fraction 0
    assert len(problems) == 1 and "broken.h5" in problems[0] and "B" in problems[0] and "t.csv" in problems[0]
    (tmp_path / "bad.csv").write_text("case_id,report\nA,x\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['features'\]"):
        read_pretrain_cohort(tmp_path / "bad.csv")
    (tmp_path / "split.csv").write_text("case_id,features,report,split\nA,a.h5,x,holdout\n")
    with pytest.raises(ValueError, match="row 2: split 'holdout'"):
        read_pretrain_cohort(tmp_path / "split.csv")


def test_configs_use_the_shared_loader_with_old_keys_renamed(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("table: cohort.csv\nout_dir: out\nmusk_model: musk_tiny_patch16_384\n"
                                     "amp: true\nepochs: 3\n")
    cfg = load_config(AggregatorPretrainConfig, tmp_path / "c.yaml")
    assert cfg.table == str(tmp_path / "cohort.csv") and cfg.output_dir == str(tmp_path / "out")
    assert cfg.arch == "musk_tiny_patch16_384" and cfg.precision == "bf16" and cfg.epochs == 3
    err = capsys.readouterr().err
    assert "'out_dir' is now spelled 'output_dir'" in err and "'amp' is now spelled 'precision'" in err
    (tmp_path / "f.yaml").write_text("table: a.csv\noutput_dir: o\namp: false\n")
    assert load_config(AggregatorPretrainConfig, tmp_path / "f.yaml").precision == "fp32"
    defaults = load_config(SelfTaughtConfig, None, {"stage1_dir": "s", "table": "t", "output_dir": "o"})
    assert (defaults.device, defaults.precision) == ("auto", "auto")  # no longer the CPU by default
    (tmp_path / "d.yaml").write_text("table: a.csv\noutput_dir: o\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"d.yaml: unknown key 'epoch'.*did you mean 'epochs'"):
        load_config(AggregatorPretrainConfig, tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("table: a.csv\noutput_dir: o\nepochs: ten\n")
    with pytest.raises(ConfigError, match=r"e.yaml: key 'epochs' expects int, got 'ten'"):
        load_config(AggregatorPretrainConfig, tmp_path / "e.yaml")


def test_mstar_cli_has_example_and_shared_flags(tmp_path, capsys):
    for command in ("pretrain-aggregator", "self-taught"):
        assert main(["mstar", command, "--example"]) == 0
        example = capsys.readouterr().out
        assert "table: null  # required" in example and "precision: auto" in example
    cfg = tmp_path / "s1.yaml"
    cfg.write_text("table: missing.csv\nout_dir: o\n")
    assert main(["mstar", "pretrain-aggregator", str(cfg), "--out-dir", str(tmp_path / "x"),
                 "--device", "cpu", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "'out_dir' is now spelled 'output_dir'" in err and "--out-dir is now spelled --out" in err
    assert "missing.csv" in err
