"""Top-j zero-shot and text-guided few-shot slide classification (openmusk.pretrain.mstar.slide_prompts)."""
from __future__ import annotations

import numpy as np
import pytest

from openmusk.pretrain.mstar.slide_prompts import (class_embeddings, few_shot_text_prototypes, read_prompts,
                                                   topj_pool, zero_shot_topj)

DIM, N_CLS, N_PROMPTS = 32, 3, 6


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cohort(seed: int, misalign: float, n_slides: int = 90, n_tiles: int = 60, carriers: int = 4):
    """Slides whose class shows in a few tiles along the class's visual direction; prompts point to
    the class's text direction, which is the visual one plus ``misalign`` x a random direction."""
    rng = np.random.default_rng(seed)
    visual = _unit(rng.normal(size=(N_CLS, DIM)))
    text = _unit(visual + misalign * _unit(rng.normal(size=(N_CLS, DIM))))
    prompts = {f"class{c}": [f"prompt {c}.{i}" for i in range(N_PROMPTS)] for c in range(N_CLS)}
    vectors = {p: text[c] + 0.3 * rng.normal(size=DIM) / np.sqrt(DIM)
               for c in range(N_CLS) for p in prompts[f"class{c}"]}
    labels = np.arange(n_slides) % N_CLS
    bags = []
    for y in labels:
        tiles = rng.normal(size=(n_tiles, DIM)) / np.sqrt(DIM) * 1.5
        tiles[:carriers] += 1.2 * visual[y]
        bags.append(rng.permutation(tiles))
    return bags, labels, prompts, lambda texts: np.stack([vectors[t] for t in texts])


def test_topj_zero_shot_beats_chance_and_shuffled_prompts_do_not():
    bags, labels, prompts, embed = _cohort(0, misalign=0.3)
    classes, emb = class_embeddings(prompts, embed)
    assert classes == ["class0", "class1", "class2"]
    scores = zero_shot_topj(bags, emb, topj=(1, 5, 60))
    acc = {j: float((s.argmax(1) == labels).mean()) for j, s in scores.items()}
    assert acc[5] > 0.8, acc
    assert acc[5] > acc[60] + 0.15, acc  # pooling every tile dilutes the few carrier tiles
    flat = [p for c in prompts for p in prompts[c]]
    shuffled_acc = []
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(flat)
        shuffled = {c: list(perm[i * N_PROMPTS:(i + 1) * N_PROMPTS]) for i, c in enumerate(prompts)}
        s = zero_shot_topj(bags, class_embeddings(shuffled, embed)[1], topj=(5,))[5]
        shuffled_acc.append(float((s.argmax(1) == labels).mean()))
    assert abs(np.mean(shuffled_acc) - 1 / N_CLS) < 0.15, shuffled_acc


def test_topj_pool_matches_hand_computation():
    tiles = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = topj_pool(tiles, targets, [1, 2, 10])
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(out[1], [1.0, 1.0])
    np.testing.assert_allclose(out[2], [(1 + s) / 2, (1 + s) / 2])
    np.testing.assert_allclose(out[10], [(1 + s) / 3, (1 + s) / 3])
    with pytest.raises(ValueError, match="'embed' features"):
        topj_pool(tiles, np.ones((2, 3)), [1])


def test_few_shot_text_prototypes_rise_with_k():
    bags, labels, prompts, embed = _cohort(1, misalign=2.0)
    _, emb = class_embeddings(prompts, embed)
    acc = {k: few_shot_text_prototypes(bags, labels, emb, k, topj=5, seeds=range(4))["balanced_accuracy_mean"]["value"]
           for k in (1, 8)}
    assert acc[8] > acc[1] + 0.1, acc
    assert acc[8] > 0.9, acc
    with pytest.raises(ValueError, match="need more than k"):
        few_shot_text_prototypes(bags[:6], labels[:6], emb, 2)


def test_read_prompts_both_layouts(tmp_path):
    mi_zero = tmp_path / "mizero.yaml"
    mi_zero.write_text("templates: ['an H&E image of {c}.', '{c}']\nclassnames:\n  LUAD: [adenocarcinoma, LUAD]\n"
                       "  LUSC: squamous cell carcinoma\n")
    assert read_prompts(mi_zero) == {"LUAD": ["an H&E image of adenocarcinoma.", "adenocarcinoma",
                                              "an H&E image of LUAD.", "LUAD"],
                                     "LUSC": ["an H&E image of squamous cell carcinoma.", "squamous cell carcinoma"]}
    plain = tmp_path / "plain.json"
    plain.write_text('{"tumour": ["tumour tissue"], "normal": ["normal tissue", "benign tissue"]}')
    assert read_prompts(plain)["normal"] == ["normal tissue", "benign tissue"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: ['no placeholder']\nclassnames: {A: a}\n")
    with pytest.raises(ValueError, match="placeholder"):
        read_prompts(bad)
    bad.write_text("A: []\n")
    with pytest.raises(ValueError, match="class 'A'"):
        read_prompts(bad)


def prompt_encoder(**_):
    """A text-only 'encoder' for the CLI test (loaded as module:function): the cohort's prompt vectors."""
    import torch

    from openmusk.encoders.base import CallableEncoder

    embed = _cohort(0, misalign=0.3, n_slides=3)[3]
    return CallableEncoder("toy", image_fn=lambda x: x, transform=lambda im: im,
                           text_fn=lambda texts: torch.from_numpy(embed(texts)))


def test_cli_zero_shot_and_few_shot_write_their_results(tmp_path):
    import json

    import pandas as pd
    import yaml

    from openmusk.cli import main
    from openmusk.pretrain.mstar.synthetic import write_h5_features

    bags, labels, prompts, _ = _cohort(0, misalign=0.3, n_slides=30)
    rows = []
    for i, (bag, y) in enumerate(zip(bags, labels)):
        write_h5_features(tmp_path / f"s{i}.h5", bag, np.zeros((len(bag), 2), int))
        rows.append({"slide_id": f"s{i}", "features": f"s{i}.h5", "label": f"class{y}"})
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    cfg = {"table": "slides.csv", "prompts": "prompts.yaml", "encoder": f"{__name__}:prompt_encoder",
           "weights": "", "topj": [1, 5], "shots": [1, 4], "seeds": 2, "few_shot_topj": 5, "device": "cpu"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["mstar", "zero-shot", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "zs")]) == 0
    zs = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert zs["top5"]["balanced_accuracy"] > 0.8
    pred = pd.read_csv(tmp_path / "zs" / "predictions.csv")
    assert list(pred.columns[:4]) == ["slide_id", "top1_class0", "top1_class1", "top1_class2"] and len(pred) == 30
    assert main(["mstar", "few-shot", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "fs")]) == 0
    fs = json.loads((tmp_path / "fs" / "metrics.json").read_text())
    assert [r["k"] for r in fs["results"]] == [1, 4]
