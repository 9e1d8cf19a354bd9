"""`protocol: musk-paper` against an independent re-implementation of the authors' protocol
(/work/shared/spec/MUSK_BENCHMARK_PROTOCOL.md) on real tiles and the tiny MUSK model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.spatial.distance import cdist

from openmusk.cli import main

SIZE = 32  # the tiny model's input: tiles are cut at this size, so preprocessing is 1.2 steps 3-4
CLASSES = ["tumor nest", "stroma", "tumor sheet"]
SOURCES = ["hgsc_nest.jpg", "hgsc_stromal_he.jpg", "he_tumor_1000px.png"]
TEMPLATES = ["a histopathology slide showing {c}", "presence of {c} tissue on image"]
N_TRAIN, N_TEST = 6, 4


@pytest.fixture(scope="module")
def paper_run(real_dir, tmp_path_factory):
    """Tiles in train/test class folders, a tiny MUSK checkpoint and the run's result files."""
    from openmusk.model import create_model
    from openmusk.model.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("paper")
    for j, src in enumerate(SOURCES):
        img = Image.open(real_dir / src).convert("RGB")
        for i in range(N_TRAIN + N_TEST):
            split = "train" if i < N_TRAIN else "test"
            x, y = (i * 37) % (img.width - SIZE), (i * 53) % (img.height - SIZE)
            p = root / "data" / split / f"c{j}" / f"{i:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            img.crop((x, y, x + SIZE, y + SIZE)).save(p)
    torch.manual_seed(3)
    save_checkpoint(create_model("musk_tiny_patch16_32"), root / "tiny.safetensors")
    spec = {"name": "paper_tiles", "format": "folder", "classes": CLASSES,
            "label_map": {f"c{j}": j for j in range(3)}, "splits": {"train": "train", "test": "test"},
            "templates": TEMPLATES, "protocol": "musk-paper", "retrieval_splits": ["train", "test"],
            "tasks": ["zeroshot", "image_retrieval", "linear_probe", "few_shot"]}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    cfg = {"output_dir": "res", "num_workers": 0, "n_resamples": 20, "seed": 123, "shots": [2],
           "few_shot_seeds": 2,
           "models": [{"name": "tiny", "kind": "musk", "model": "musk_tiny_patch16_32",
                       "pretrained": "tiny.safetensors"}],
           "datasets": [{"spec": "spec.yaml", "root": "data"}]}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "run", str(root / "run.yaml"), "--device", "cpu"]) == 0
    out = {t: json.loads((root / "res" / "tiny" / "paper_tiles" / f"{t}.json").read_text())
           for t in spec["tasks"]}
    return root, out


# ---------------------------------------------------------------- the protocol, re-implemented
def _load(root, split):
    """(normalised (N, 3, S, S) images, labels) in dataset order: class folders, then files sorted."""
    xs, ys = [], []
    for j in range(3):
        for p in sorted((root / "data" / split / f"c{j}").glob("*.png")):
            a = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
            xs.append((a - 0.5) / 0.5)
            ys.append(j)
    return torch.tensor(np.stack(xs)).permute(0, 3, 1, 2), np.array(ys)


def _balanced(y, p):
    return float(np.mean([(p[y == c] == c).mean() for c in np.unique(y)]))


def _probe(x, y, test_x, seed):
    """Section 5.5-5.7: DataLoader, fix_seed, Linear + xavier, AdamW 0.1, cosine per step, 10 epochs."""
    import random
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.tensor(y)),
                                         batch_size=256, shuffle=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    torch.nn.init.xavier_uniform_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0)
    steps = 10 * len(loader)
    for epoch in range(10):
        for i, (xb, yb) in enumerate(loader):
            for g in opt.param_groups:
                g["lr"] = 0.5 * (1 + math.cos(math.pi * (i + epoch * len(loader)) / steps)) * 0.1
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        return lin(test_x).argmax(1).numpy()


def _kshot(y, k, seed):
    g = torch.Generator()
    g.manual_seed(seed)
    seen, keep = {}, []
    for i in torch.randperm(len(y), generator=g).tolist():
        if k < 0 or seen.get(y[i], 0) < k:
            seen[y[i]] = seen.get(y[i], 0) + 1
            keep.append(i)
    return keep


def test_musk_paper_protocol_reproduced_independently(paper_run) -> None:
    from openmusk.model import create_model
    from openmusk.text.tokenizer import get_tokenizer

    root, res = paper_run
    model = create_model(pretrained=str(root / "tiny.safetensors")).eval()
    tok = get_tokenizer()
    xtr, ytr = _load(root, "train")
    xte, yte = _load(root, "test")
    with torch.no_grad():
        # 2.2-2.4 zero-shot: mean of normalised prompt embeddings, NOT re-normalised; 100 * logits
        ids, pad = tok([t.format(c=c) for c in CLASSES for t in TEMPLATES], max_len=100)
        w = model.encode_text(ids, pad).reshape(3, len(TEMPLATES), -1).mean(1)
        pred = (100.0 * model.encode_image(xte) @ w.T).argmax(1).numpy()
        # 4.1-4.4 image retrieval over train + test, leave one out
        emb = model.encode_image(torch.cat([xtr, xte])).double().numpy()
        probe_tr = model.encode_image(xtr, head=False, multiscale=True)
        probe_te = model.encode_image(xte, head=False, multiscale=True)
        single_tr = model.encode_image(xtr, head=False)
        single_te = model.encode_image(xte, head=False)
    zs = res["zeroshot"]
    assert zs["details"]["protocol"] == "musk-paper"
    assert zs["per_sample"]["y_pred"] == pred.tolist()
    assert zs["metrics"]["balanced_accuracy"]["value"] == pytest.approx(_balanced(yte, pred))
    from openmusk.encoders import load_encoder
    from openmusk.eval.paper import paper_class_weights
    enc = load_encoder("musk", weights=str(root / "tiny.safetensors"), device="cpu")
    ours = paper_class_weights(enc, CLASSES, TEMPLATES)   # the class embeddings themselves
    np.testing.assert_allclose(ours, w.numpy(), rtol=1e-5, atol=1e-6)
    assert (np.linalg.norm(ours, axis=1) < 0.999).all()   # not re-normalised

    y = np.concatenate([ytr, yte])
    d = cdist(emb, emb)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :5]
    ir = res["image_retrieval"]["metrics"]
    assert set(ir) == {"acc@1", "acc@3", "acc@5", "mmv@5"}
    for k in (1, 3, 5):
        assert ir[f"acc@{k}"]["value"] == pytest.approx(np.mean([(y[nn[i, :k]] == y[i]).any()
                                                                  for i in range(len(y))]))
    mmv = np.mean([np.bincount(y[nn[i]], minlength=3).argmax() == y[i] for i in range(len(y))])
    assert ir["mmv@5"]["value"] == pytest.approx(mmv)

    # 5.8 full-data probe: multiscale features, seed 123, all rows in randperm order
    keep = _kshot(ytr, -1, 123)
    pred = _probe(probe_tr[keep], ytr[keep], probe_te, 123)
    lp = res["linear_probe"]
    assert lp["metrics"]["balanced_accuracy"]["value"] == pytest.approx(_balanced(yte, pred), abs=1e-9)
    assert lp["per_sample"]["y_pred"] == pred.tolist()

    # k-shot: single-scale features, seeds 0..2, first k per class in randperm order
    fs = res["few_shot"]
    assert fs["details"]["seeds"] == [0, 1]
    for k in (2,):
        per_seed = []
        for s in range(2):
            keep = _kshot(ytr, k, s)
            assert len(keep) == 3 * k
            per_seed.append(_balanced(yte, _probe(single_tr[keep], ytr[keep], single_te, s)))
        assert fs["per_sample"]["per_seed"][str(k)]["balanced_accuracy"] == pytest.approx(per_seed, abs=1e-9)
        assert fs["metrics"][f"balanced_accuracy@{k}shot"]["value"] == pytest.approx(np.mean(per_seed))


def test_protocol_spellings_and_the_paper_grid(tmp_path) -> None:
    from openmusk.eval.config import paper_grid_config

    cfg = paper_grid_config({"data_root": str(tmp_path), "protocol": "clip_benchmark"})
    assert cfg.protocol == "clip-benchmark" and cfg.data_root == str(tmp_path)
    grid = paper_grid_config()
    assert grid.protocol == "musk-paper" and grid.seed == 123
    zs = sorted(d.spec for d in grid.datasets if "zeroshot" in d.tasks)
    assert zs == ["pannuke", "skin", "skin_tumor", "unitopatho"]
    with pytest.raises(ValueError, match="protocol must be one of"):
        paper_grid_config({"protocol": "nature"})
    assert main(["eval", "run", "--paper", "--set", f"output_dir={tmp_path / 'o'}"]) == 2  # no data_root
