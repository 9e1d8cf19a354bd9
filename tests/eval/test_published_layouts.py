"""Replicas of each dataset's published download, built from real tiles, read by `openmusk eval run`
with the built-in registry specs (no hand-written CSV in between)."""
from __future__ import annotations

import csv
import gzip
import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from openmusk.cli import main
from openmusk.eval.datasets import seeded_split
from openmusk.eval.specs import build_dataset, get_dataset_spec

TILE = 40


@pytest.fixture(scope="module")
def tiles(real_dir) -> list[Image.Image]:
    """Real H&E tiles cut from the tumour crop (a different tile for every item)."""
    img = Image.open(real_dir / "he_tumor_1000px.png").convert("RGB")
    per = img.width // TILE
    return [img.crop(((i % per) * TILE, (i // per) * TILE, (i % per + 1) * TILE, (i // per + 1) * TILE))
            for i in range(per * per)]


class _Tiles:
    """Hands out the next real tile."""

    def __init__(self, tiles):
        self.tiles, self.i = tiles, 0

    def __call__(self) -> Image.Image:
        self.i += 1
        return self.tiles[self.i % len(self.tiles)]

    def save(self, path, fmt=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self().save(path, fmt)
        return path


def _skin(root, t):
    rows = [("file", "class", "malignicy", "case", "set")]
    from openmusk.eval.datasets.skin import SKIN_CLASSES
    for c in SKIN_CLASSES:
        for s in ("Train", "Validation", "Test"):
            f = f"data/tiles/{c}/{c}_{s}.png"
            t.save(root / f)
            rows.append((f, c, "tumor" if c.startswith("tumor") else "nontumor", f"case_{s}", s))
    with open(root / "data" / "tiles-v2.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return {"skin": (16, 16), "skin_tumor": (4, 4)}


def _pannuke(root, t):
    for k in (1, 2, 3):
        imgs = np.stack([np.asarray(t(), dtype=np.float64) for _ in range(4)])
        masks = np.zeros((4, TILE, TILE, 6))
        masks[[0, 2], 5:9, 5:9, 0] = 7          # neoplastic instances: malignant
        masks[[1, 3], 5:9, 5:9, 1] = 3          # inflammatory only: benign
        d = root / f"Fold {k}"
        (d / "images" / f"fold{k}").mkdir(parents=True)
        (d / "masks" / f"fold{k}").mkdir(parents=True)
        np.save(d / "images" / f"fold{k}" / "images.npy", imgs)
        np.save(d / "images" / f"fold{k}" / "types.npy", np.array(["Breast"] * 4))
        np.save(d / "masks" / f"fold{k}" / "masks.npy", masks)
    return {"pannuke": (8, 4)}


def _unitopatho(root, t):
    from openmusk.eval.datasets.unitopatho import UNITOPATHO_CODES
    for split in ("train", "test"):
        rows = [("image_id", "top_label_name", "top_label", "type", "grade")]
        for j, c in enumerate(UNITOPATHO_CODES):
            name = f"{split}-{j}.png"
            t.save(root / "800" / c / name)
            rows.append((name, c, j, "x", "y"))
        with open(root / "800" / f"{split}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    return {"unitopatho": (6, 6)}


def _bracs(root, t):
    from openmusk.eval.datasets.bracs import BRACS_FOLDERS
    for split in ("train", "val", "test"):
        for c in BRACS_FOLDERS:
            t.save(root / "BRACS_RoI" / "latest_version" / split / c / f"BRACS_1_{c}_{split}.png")
    return {"bracs6": (7, 7), "bracs3": (7, 7)}


def _pcam(root, t):
    import h5py
    for split, n in (("train", 6), ("valid", 2), ("test", 4)):
        x = np.stack([np.asarray(t().resize((96, 96)), dtype=np.uint8) for _ in range(n)])
        y = (np.arange(n) % 2).reshape(n, 1, 1, 1).astype(np.uint8)
        for part, arr in (("x", x), ("y", y)):
            p = root / f"camelyonpatch_level_2_split_{split}_{part}.h5"
            root.mkdir(parents=True, exist_ok=True)
            with h5py.File(p, "w") as f:
                f.create_dataset(part, data=arr)
            if split == "test":  # released gzipped
                with open(p, "rb") as src, gzip.open(str(p) + ".gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                p.unlink()
    return {"pcam": (6, 4)}


def _sicap(root, t):
    import pandas as pd
    for split, n in (("Train", 2), ("Test", 1)):
        rows = []
        for j, c in enumerate(["NC", "G3", "G4", "G5"]):
            for i in range(n):
                name = f"16B00{j}_{split}_{i}.jpg"
                t.save(root / "images" / name, "JPEG")
                hot = [int(k == j) for k in range(4)]
                rows.append([name, *hot, int(c == "G4" and i == 0)])  # a cribriform G4 row
        (root / "partition" / "Test").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["image_name", "NC", "G3", "G4", "G5", "G4C"]).to_excel(
            root / "partition" / "Test" / f"{split}.xlsx", index=False)
    return {"sicapv2": (8, 4)}


def _osteo(root, t):
    rows = [("image.name", "classification")]
    labels = ["Non-Tumor", "Viable", "Non-Viable-Tumor"] * 3 + ["viable: non-viable"]
    for i, lab in enumerate(labels):
        folder = root / f"Training-Set-{1 + i % 2}" / f"set{1 + i % 4}"
        t.save(folder / f"Case-{i}-A{i}-{i}-{i}.jpg", "JPEG")
        rows.append((f"Case {i} A{i}-{i} - {i}", lab))   # the CSV spells hyphens as spaces
    with open(root / "ML_Features_1144.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return {"osteo": (6, 3)}   # 9 labelled (mixed one left out), 1 of 3 per class to test


def _renalcell(root, t):
    for c in ["blood", "cancer", "empty", "normal", "other", "stroma"]:
        for i in range(3):
            t.save(root / "tissue_classification" / c / f"{c}_{i}.png")
    return {"renalcell": (12, 6)}


def _wsss(root, t):
    for i, flags in enumerate(["[1, 0, 0]", "[0, 1, 0]", "[0, 0, 1]", "[1, 1, 0]", "[1, 0, 0]",
                               "[0, 1, 0]", "[0, 0, 1]"]):
        t.save(root / "1.training" / f"{436219 + i}-{flags}.png")
    for split in ("2.validation", "3.testing"):
        for i, present in enumerate([(0,), (1,), (2,), (0, 2)]):
            t.save(root / split / "img" / f"{i:02d}.png")
            mask = np.full((TILE, TILE), 3, np.uint8)
            for j, v in enumerate(present):
                mask[j * 10:(j + 1) * 10] = v
            (root / split / "mask").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask, mode="L").save(root / split / "mask" / f"{i:02d}.png")
    return {"wsss4luad": (6, 3)}


def _lc25000(root, t):
    for folder in ["lung_image_sets/lung_aca", "lung_image_sets/lung_n", "lung_image_sets/lung_scc",
                   "colon_image_sets/colon_aca", "colon_image_sets/colon_n"]:
        for i in range(3):
            t.save(root / folder / f"{folder.split('/')[1]}{i + 1}.jpeg", "JPEG")
    return {"lc25000": (10, 5)}


def _bach(root, t):
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    rows = []
    for c in ["Benign", "InSitu", "Invasive", "Normal"]:
        for i in range(3):
            name = f"{c[:2].lower()}{i:03d}.tif"
            t.save(photos / c / name, "TIFF")
            rows.append((name, c))
    with open(photos / "microscopy_ground_truth.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)   # headerless, as published
    return {"bach": (8, 4)}


def _mhist(root, t):
    rows = [("Image Name", "Majority Vote Label", "Number of Annotators who Selected SSA (Out of 7)",
             "Partition")]
    for i, (lab, part) in enumerate([("HP", "train"), ("SSA", "train"), ("HP", "train"), ("SSA", "test"),
                                     ("HP", "test")]):
        t.save(root / "images" / f"MHIST_{i:03d}.png")
        rows.append((f"MHIST_{i:03d}.png", lab, 3, part))
    with open(root / "annotations.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return {"mhist": (3, 2)}


def _bookset(root, t):
    entries = {}
    for i in range(4):
        uuid = f"0b{i}e5c1a-uuid-{i}"
        entries[str(i)] = {"figure_id": f"fig{i}", "letter": "A", "caption": f"figure {i}: tumour nest {i}",
                           "uuid": uuid}
        if i != 3:          # the release has captions without an image
            t.save(root / "books_set" / "images" / f"{uuid}.png")
    (root / "books_set" / "captions.json").write_text(json.dumps(entries))
    return {"bookset": (3, None)}


def _pubmedset(root, t):
    entries = {str(i): {"caption": f"pubmed figure {i}", "uuid": f"pm-{i}"} for i in range(3)}
    for i in range(3):
        t.save(root / "pubmed_set" / "images" / f"pm-{i}.jpg", "JPEG")
    (root / "pubmed_set").mkdir(parents=True, exist_ok=True)
    (root / "pubmed_set" / "captions.json").write_text(json.dumps(entries))
    return {"pubmedset": (3, None)}


def _pathmmu(root, t):
    for subset in ("Book", "WebPathology", "Twitter"):
        items = {}
        for i in range(2):
            t.save(root / subset / "images" / f"{subset}_{i}.jpg", "JPEG")
            items[str(i)] = {"img_path": f"{subset}_{i}.jpg", "caption": f"{subset} caption {i}"}
        (root / subset / "GPTCaption").mkdir(parents=True)
        (root / subset / "GPTCaption" / "test.json").write_text(json.dumps(items))
    return {"pathmmu": (6, None)}


BUILDERS = {"skin": _skin, "pannuke": _pannuke, "unitopatho": _unitopatho, "bracs": _bracs, "pcam": _pcam,
            "sicapv2": _sicap, "osteo": _osteo, "renalcell": _renalcell, "wsss4luad": _wsss,
            "lc25000": _lc25000, "bach": _bach, "mhist": _mhist, "bookset": _bookset,
            "pubmedset": _pubmedset, "pathmmu": _pathmmu}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, tiles):
    """One folder per download; returns {spec: (root, n_train or n_items, n_test)}."""
    base = tmp_path_factory.mktemp("published")
    t = _Tiles(tiles)
    out = {}
    for folder, build in BUILDERS.items():
        for spec, counts in build(base / folder, t).items():
            out[spec] = (base / folder, *counts)
    return out


def test_every_registry_spec_reads_its_published_layout(replicas) -> None:
    for name, (root, n_a, n_b) in replicas.items():
        spec = get_dataset_spec(name)
        if n_b is None:  # caption sets: the whole set
            ds = build_dataset(spec, root)
            assert len(ds) == n_a and ds.captions is not None, name
            ds.load_image(0)
            continue
        train, test = build_dataset(spec, root, "train"), build_dataset(spec, root, "test")
        assert (len(train), len(test)) == (n_a, n_b), name
        assert set(train.labels) == set(test.labels) == set(range(len(spec.classes))), name
        assert not set(train.keys) & set(test.keys), name
        assert train.load_image(0).mode == "RGB", name


def test_published_rules(replicas) -> None:
    skin_root = replicas["skin_tumor"][0]
    tumour = build_dataset(get_dataset_spec("skin_tumor"), skin_root, "test")
    assert all(k.startswith("data/tiles/tumor_") for k in tumour.keys)
    bracs = build_dataset(get_dataset_spec("bracs3"), replicas["bracs3"][0], "train")
    assert bracs.labels == [0, 0, 0, 1, 1, 2, 2] and bracs.load_image(0).size == (1792, 1792)
    pannuke = build_dataset(get_dataset_spec("pannuke"), replicas["pannuke"][0], "test")
    assert pannuke.labels == [1, 0, 1, 0]
    sicap = build_dataset(get_dataset_spec("sicapv2"), replicas["sicapv2"][0], "test")
    assert sicap.labels == [0, 1, 2, 3]            # the G4C row counts as G4
    wsss = build_dataset(get_dataset_spec("wsss4luad"), replicas["wsss4luad"][0], "test")
    assert wsss.labels == [0, 1, 2]                # the mixed mask is left out
    with pytest.raises(ValueError, match="set == 'test'"):
        from openmusk.eval.datasets.skin import read_skin
        read_skin(skin_root, "test")               # the published spelling is Test
    y = np.repeat(np.arange(3), [2, 5, 9])
    parts = seeded_split(y, seed=0)
    assert all(set(y[p]) == {0, 1, 2} for p in parts.values())
    assert np.array_equal(seeded_split(y, seed=0)["test"], parts["test"])
    with pytest.raises(ValueError, match="class 1 has 1 item"):
        seeded_split([0, 0, 1])


def test_eval_run_reads_every_replica_with_the_registry_specs(replicas, tmp_path) -> None:
    from openmusk.data.features_h5 import read_attrs
    from openmusk.eval.features import cache_path

    datasets = [{"spec": name, "root": str(root), "tasks": ["retrieval"] if n_b is None else ["knn"]}
                for name, (root, n_a, n_b) in replicas.items()]
    config = {"output_dir": str(tmp_path / "res"), "batch_size": 16, "num_workers": 0, "n_resamples": 20,
              "models": [{"name": "tiny", "kind": "musk", "model": "musk_tiny_patch16_32"}],
              "datasets": datasets, "retrieval_ks": [1], "knn_k": 1}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["eval", "run", str(tmp_path / "run.yaml"), "--device", "cpu"]) == 0
    for name, (root, n_a, n_b) in replicas.items():
        task = "retrieval" if n_b is None else "knn"
        r = json.loads((tmp_path / "res" / "tiny" / name / f"{task}.json").read_text())
        assert r["details"]["protocol"] == get_dataset_spec(name).protocol
        if n_b is None:
            assert r["details"]["n_images"] == n_a, name
            continue
        assert len(r["per_sample"]["y_true"]) == n_b, name
        train = cache_path(tmp_path / "res" / "features", "tiny", name, "train", "probe")
        assert read_attrs(train)["n_items"] == n_a, name
