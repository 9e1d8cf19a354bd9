"""Stage 1 on a synthetic cohort whose slides, reports (real tokenised text) and RNA share planted attributes."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from openmusk.data.features_h5 import read_features
from openmusk.mil.cohort import BagDataset, PatientRecord
from openmusk.mil.metrics import roc_auc
from openmusk.mil.models import MilModel, build_aggregator, load_aggregator
from openmusk.mil.tasks import ClassificationTask
from openmusk.mil.trainer import FitConfig, evaluate, fit
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig
from openmusk.pretrain.mstar.downstream import few_shot_slides, init_mil_aggregator, zero_shot_slides
from openmusk.pretrain.mstar.model import AGGREGATOR_WEIGHTS, MstarPretrained
from openmusk.pretrain.mstar.stage1 import pretrain_aggregator
from openmusk.pretrain.mstar.synthetic import _TEMPLATES, ATTRIBUTES, make_trimodal_cohort

pytestmark = pytest.mark.slow


def _config(cohort, out, **kw) -> AggregatorPretrainConfig:
    base = dict(table=str(cohort.table), rna_table=str(cohort.rna_table), output_dir=str(out), aggregator="abmil",
                hidden_dim=64, embed_dim=32, arch="musk_tiny_patch16_384", weights="random", n_genes=100,
                rna_hidden=[64], batch_size=16, epochs=25, lr=2e-3, warmup_epochs=1, val_fraction=0.25,
                resume=True)
    base.update(kw)
    return AggregatorPretrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("mstar_stage1")
    cohort = make_trimodal_cohort(root / "cohort", n_patients=160, n_patches=48, dim=32, n_genes=200, seed=0)
    cfg = _config(cohort, root / "out")
    metrics = pretrain_aggregator(cfg, progress=False)
    return cohort, cfg, metrics


def test_stage1_aligns_three_modalities_with_missing_ones(trained):
    cohort, cfg, metrics = trained
    table = pd.read_csv(cohort.table, keep_default_na=False)
    rna_cases = set(pd.read_csv(cohort.rna_table)["case_id"])
    assert (table["report"] == "").sum() > 10 and len(table) - len(rna_cases) > 10  # modalities really missing
    hist = metrics["history"]
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    retrieval = metrics["final"]["retrieval"]
    assert set(retrieval) == {f"{a}->{b}" for a, b in itertools.permutations(("slide", "report", "rna"), 2)}
    for pair, r in retrieval.items():
        assert r["n"] >= 20
        assert r["R@5"] > 3 * r["chance@5"], (pair, r)


def test_shuffled_pairs_stay_at_chance(trained, tmp_path):
    cohort, cfg, _ = trained
    rng = np.random.default_rng(1)
    table = pd.read_csv(cohort.table, keep_default_na=False)
    table["report"] = table["report"].to_numpy()[rng.permutation(len(table))]
    rna = pd.read_csv(cohort.rna_table)
    rna["case_id"] = rna["case_id"].to_numpy()[rng.permutation(len(rna))]
    table.to_csv(tmp_path / "cohort.csv", index=False)
    rna.to_csv(tmp_path / "rna.csv", index=False)
    (tmp_path / "features").symlink_to(cohort.features_dir)
    shuffled = dataclasses.replace(cfg, table=str(tmp_path / "cohort.csv"), rna_table=str(tmp_path / "rna.csv"),
                                   output_dir=str(tmp_path / "out"))
    retrieval = pretrain_aggregator(shuffled, progress=False)["final"]["retrieval"]
    for pair in ("slide->report", "slide->rna", "report->rna"):
        r = retrieval[pair]
        assert r["R@5"] < r["chance@5"] + 0.2, (pair, r)


def test_resume_continues_from_the_saved_epoch(trained):
    cohort, cfg, metrics = trained
    more = pretrain_aggregator(dataclasses.replace(cfg, epochs=cfg.epochs + 1), progress=False)
    assert len(more["history"]) == cfg.epochs + 1
    assert more["history"][: cfg.epochs] == metrics["history"]


def _bags(cohort):
    table = pd.read_csv(cohort.table, keep_default_na=False)
    bags = []
    for path in table["features"]:
        bags.append(read_features(cohort.table.parent / path)[0])
    return table, bags


def test_zero_shot_and_few_shot_slide_classification(trained):
    cohort, cfg, _ = trained
    pre = MstarPretrained(cfg.output_dir)
    table, bags = _bags(cohort)
    keep = np.flatnonzero(table["grade"].to_numpy() != 1)
    y = (table["grade"].to_numpy()[keep] == 2).astype(int)

    def prompts(level: int) -> list[str]:
        return [t.format(grade=ATTRIBUTES["grade"][level], subtype=s, lymph=lymph)
                for t in _TEMPLATES for s in ATTRIBUTES["subtype"] for lymph in ATTRIBUTES["lymph"]]

    classes, probs = zero_shot_slides(pre, [bags[i] for i in keep], {"low": prompts(0), "high": prompts(2)})
    assert classes == ["low", "high"]
    assert roc_auc(y, probs[:, 1]) > 0.8
    feats = pre.raw_slide_features([bags[i] for i in keep]).numpy()
    few = few_shot_slides(feats, y, k=4, seeds=range(5))
    assert few["auc_mean"]["value"] > 0.7
    control = few_shot_slides(feats, np.random.default_rng(0).permutation(y), k=4, seeds=range(5))
    assert control["auc_mean"]["value"] < 0.65


def test_mstar_plus_initialisation_beats_scratch_with_few_slides(trained):
    cohort, cfg, _ = trained
    weights = f"{cfg.output_dir}/{AGGREGATOR_WEIGHTS}"
    report = load_aggregator(build_aggregator("abmil", 32, 64), weights, strict=True)
    assert not report["missing"] and not report["unexpected"]
    table = pd.read_csv(cohort.table, keep_default_na=False)
    table = table[table["grade"] != 1].reset_index(drop=True)  # low vs high grade
    y = (table["grade"].to_numpy() == 2).astype(int)
    recs = [PatientRecord(c, [c], label=int(lab), feature_files=[str(cohort.table.parent / f)])
            for c, lab, f in zip(table["case_id"], y, table["features"])]
    task = ClassificationTask(["low", "high"])
    aucs = {"mstar+": [], "scratch": []}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        train = np.concatenate([rng.choice(np.flatnonzero(y == c), 3, replace=False) for c in range(2)])
        test = np.setdiff1d(np.arange(len(recs)), train)
        for arm in aucs:
            torch.manual_seed(seed)
            model = MilModel(build_aggregator("abmil", 32, 64), 2)
            if arm == "mstar+":
                init_mil_aggregator(model, weights)
            fit(model, BagDataset([recs[i] for i in train]), None, task,
                FitConfig(epochs=20, lr=1e-3, device="cpu", seed=seed))
            aucs[arm].append(task.score(evaluate(model, BagDataset([recs[i] for i in test]), task,
                                                 FitConfig(device="cpu"))))
    assert np.mean(aucs["mstar+"]) > np.mean(aucs["scratch"]) + 0.05, aucs


def test_tuned_report_encoder_trains_language_side_only_and_reloads(tmp_path):
    from openmusk.model import create_model, save_checkpoint
    from openmusk.text import get_tokenizer

    torch.manual_seed(0)
    init = tmp_path / "tiny.safetensors"
    save_checkpoint(create_model("musk_tiny_patch16_384"), init)
    cohort = make_trimodal_cohort(tmp_path / "c", n_patients=24, n_patches=8, dim=8, n_genes=20, seed=3)
    cfg = _config(cohort, tmp_path / "out", weights=str(init), text_mode="tuned", epochs=2, n_genes=10,
                  batch_size=8, text_lr=1e-3, val_fraction=0.0)
    pretrain_aggregator(cfg, progress=False)
    before = create_model(pretrained=str(init)).state_dict()
    pre = MstarPretrained(cfg.output_dir)
    after = pre.report_encoder.musk.state_dict()
    lang, vis = "beit3.encoder.layers.0.self_attn.q_proj.B.weight", "beit3.encoder.layers.0.self_attn.q_proj.A.weight"
    assert (after[lang] - before[lang]).abs().max() > 1e-4  # the language expert was trained
    torch.testing.assert_close(after[vis], before[vis])    # the vision expert got no gradient
    text = pre.embed_texts(["Sections show adenocarcinoma.", "Fibrous stroma."])
    with torch.no_grad():
        ids, pad = get_tokenizer()(["Sections show adenocarcinoma.", "Fibrous stroma."])
        direct = pre.model.encode_report(pre.report_encoder.musk.encode_text(ids, pad))
    torch.testing.assert_close(text, direct, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    torch.manual_seed(0)
    cohort = make_trimodal_cohort(tmp_path / "c", n_patients=32, n_patches=16, dim=16, n_genes=40, seed=4)
    cfg = _config(cohort, tmp_path / "out", precision="bf16", epochs=6, n_genes=20, batch_size=16, val_fraction=0.0)
    hist = pretrain_aggregator(cfg, progress=False)["history"]
    losses = [h["loss"] for h in hist]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
