"""Dataset specs (built-in and user YAML), the HDF5 feature cache, model comparisons."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import stats

from openmusk.core.config import ConfigError
from openmusk.core.stats import wilcoxon_paired_bootstrap
from openmusk.data.features_h5 import read_attrs
from openmusk.encoders import CallableEncoder
from openmusk.eval.compare import compare_results
from openmusk.eval.features import cache_path, cached_features, cached_text_features
from openmusk.eval.specs import (DatasetSpec, build_dataset, get_dataset_spec, list_dataset_specs,
                                 load_dataset_spec)
from openmusk.eval.tasks import classification_result, few_shot


def test_registry_holds_the_papers_datasets_with_prompts():
    names = list_dataset_specs()
    for n in ("pcam", "skin", "pannuke", "unitopatho", "bracs3", "bracs6", "bookset", "pathmmu",
              "crc100k", "sicapv2", "osteo", "renalcell", "wsss4luad", "lc25000", "bach", "mhist"):
        assert n in names
    pcam = get_dataset_spec("pcam")
    assert pcam.classes[1] == "Lymph node containing metastatic tumor tissue"
    assert pcam.templates[0] == "a histopathology slide showing {c}" and pcam.splits["val"] == "valid"
    bracs3 = get_dataset_spec("bracs3")
    assert bracs3.reader == "bracs" and bracs3.reader_options == {"groups": "3", "size": 1792}
    for n in names:  # every spec is self-consistent, and reads the data as published
        s = get_dataset_spec(n)
        assert s.tasks and (s.classes or s.caption_column or s.reader in ("bookset", "pathmmu"))
        assert s.protocol == ("clip-benchmark" if n in ("bach", "mhist") else "musk-paper")


def test_user_spec_yaml_and_its_errors(tmp_path, real_dir):
    img = Image.open(real_dir / "hgsc_nest.jpg").convert("RGB").crop((0, 0, 64, 64))
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        img.save(data / f"{i}.png")
    (data / "all.csv").write_text("file,grade,fold\n0.png,G3,a\n1.png,G4,a\n2.png,G3,b\n3.png,G5,b\n")
    spec = {"name": "mine", "format": "csv", "path": "all.csv", "image_column": "file",
            "label_column": "grade", "split_column": "fold", "classes": ["grade 3", "grade 4", "grade 5"],
            "label_map": {"G3": 0, "G4": 1, "G5": 2}, "tasks": ["linear_probe"]}
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "mine.yaml").write_text(yaml.safe_dump(spec))
    s = get_dataset_spec(str(tmp_path / "specs" / "mine.yaml"))
    assert s.path == "all.csv"   # relative to the dataset root, not to the spec file
    ds = build_dataset(s, data, "b")
    assert ds.labels == [0, 2] and ds.keys == ["2.png", "3.png"] and ds.name == "mine"
    with pytest.raises(ValueError, match="where is its data"):
        build_dataset(s, None, "b")
    # a spec may name its own root, relative to the spec file like every path in a config
    (tmp_path / "specs" / "rooted.yaml").write_text(yaml.safe_dump({**spec, "root": "../data"}))
    s = load_dataset_spec(tmp_path / "specs" / "rooted.yaml")
    assert s.root == str(tmp_path / "specs" / ".." / "data") and build_dataset(s, split="a").labels == [0, 1]
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**spec, "clases": ["x"]}))
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'clases' .*did you mean 'classes'"):
        load_dataset_spec(tmp_path / "typo.yaml")
    (tmp_path / "type.yaml").write_text(yaml.safe_dump({**spec, "label_map": {"G3": "zero"}}))
    with pytest.raises(ConfigError, match=r"type\.yaml: key 'label_map.G3' expects int, got 'zero'"):
        load_dataset_spec(tmp_path / "type.yaml")
    (tmp_path / "noname.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "name"}))
    with pytest.raises(ConfigError, match=r"noname\.yaml: missing required key\(s\) \['name'\]"):
        load_dataset_spec(tmp_path / "noname.yaml")
    with pytest.raises(ValueError, match="needs a '{c}' placeholder"):
        DatasetSpec(name="x", templates=["no placeholder"])
    with pytest.raises(KeyError, match="no dataset spec named 'pcamm'"):
        get_dataset_spec("pcamm")


def test_feature_cache_is_keyed_reused_and_rebuilt(tmp_path, real_dir):
    img = Image.open(real_dir / "hgsc_stromal_he.jpg").convert("RGB")
    folder = tmp_path / "d" / "stroma"
    folder.mkdir(parents=True)
    for i in range(5):
        img.crop((i * 50, 0, i * 50 + 32, 32)).save(folder / f"{i}.png")
    (folder / "8_broken.png").write_bytes(b"\x89PNG broken")
    calls = []

    def image_fn(x):
        calls.append(len(x))
        return x.mean(dim=(2, 3))

    enc = CallableEncoder("mean_rgb", image_fn, transform=lambda im: torch.from_numpy(
        np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255, text_fn=lambda t: torch.ones(len(t), 3))
    spec = DatasetSpec(name="stroma_tiles")
    ds = build_dataset(spec, tmp_path / "d")
    a = cached_features(enc, ds, None, "embed", tmp_path / "cache", batch_size=2, num_workers=0,
                        progress=False)
    assert sum(calls) == 5 and len(a.failed) == 1 and "8_broken.png" in a.failed[0][1]
    path = cache_path(tmp_path / "cache", "mean_rgb", "stroma_tiles", None, "embed")
    attrs = read_attrs(path)   # the cache says which encoder made it
    assert (attrs["encoder_name"], attrs["n_items"], attrs["kind"]) == ("mean_rgb", 6, "embed")
    b = cached_features(enc, ds, None, "embed", tmp_path / "cache", num_workers=0, progress=False)
    assert sum(calls) == 5 and np.array_equal(a.features, b.features)  # read back, not recomputed
    assert b.failed == a.failed and np.array_equal(b.index, a.index)
    ref = np.stack([np.asarray(ds.load_image(i), dtype=np.float32).mean((0, 1)) / 255 for i in range(5)])
    assert np.allclose(a.features, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)
    img.crop((0, 0, 32, 32)).save(folder / "9.png")  # the dataset grew
    c = cached_features(enc, build_dataset(spec, tmp_path / "d"), None, "embed", tmp_path / "cache",
                        num_workers=0, progress=False)
    assert len(c.features) == 6 and sum(calls) == 11
    enc.spec = {"encoder": "mean_rgb", "weights": "other.safetensors"}   # same name, other model
    cached_features(enc, build_dataset(spec, tmp_path / "d"), None, "embed", tmp_path / "cache",
                    num_workers=0, progress=False)
    assert sum(calls) == 17
    t1 = cached_text_features(enc, ["a", "b"], "stroma_tiles", None, tmp_path / "cache")
    assert t1.shape == (2, 3) and np.array_equal(
        t1, cached_text_features(enc, ["a", "b"], "stroma_tiles", None, tmp_path / "cache"))
    path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="delete .* to rebuild"):
        cached_features(enc, ds, None, "embed", tmp_path / "cache", num_workers=0, progress=False)


def test_paired_comparisons_match_direct_tests():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    good = np.where(rng.random(120) < 0.9, y, (y + 1) % 3)
    poor = np.where(rng.random(120) < 0.5, y, (y + 1) % 3)
    a = classification_result("linear_probe", y, good, n_resamples=100)
    b = classification_result("linear_probe", y, poor, n_resamples=100)
    tests = compare_results(a, b, n_resamples=300, seed=1)
    ca, cb = good == y, poor == y
    table = [[(ca & cb).sum(), (ca & ~cb).sum()], [(~ca & cb).sum(), (~ca & ~cb).sum()]]
    assert tests["accuracy"]["test"] == "mcnemar-exact"
    assert tests["accuracy"]["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert tests["balanced_accuracy"]["low"] > 0.2 and tests["balanced_accuracy"]["p_value"] < 0.01
    from openmusk.eval.metrics import CLASSIFICATION_METRICS
    ref = wilcoxon_paired_bootstrap(CLASSIFICATION_METRICS["balanced_accuracy"], (y, good), (y, poor),
                                    n_resamples=300, seed=1)
    assert compare_results(a, b, n_resamples=300, seed=1, method="paper")["balanced_accuracy"] == ref
    assert ref["p_value"] < 1e-10 and ref["mean_difference"] > 0.2 and "NOT a valid" in ref["warning"]
    assert compare_results(a, a, n_resamples=50)["accuracy"]["p_value"] == 1.0
    x = rng.normal(size=(60, 6)) + np.repeat(np.eye(3, 6) * 3, 20, axis=0)
    yy = np.repeat(np.arange(3), 20)
    fa = few_shot(x[::2], yy[::2], x[1::2], yy[1::2], shots=(2,), seeds=range(5))
    fb = few_shot(rng.normal(size=(30, 6)), yy[::2], x[1::2], yy[1::2], shots=(2,), seeds=range(5))
    pt = compare_results(fa, fb)["balanced_accuracy@2shot"]
    va = np.array(fa["per_sample"]["per_seed"]["2"]["balanced_accuracy"])
    vb = np.array(fb["per_sample"]["per_seed"]["2"]["balanced_accuracy"])
    direct = stats.permutation_test((va, vb), lambda u, v, axis: np.mean(u - v, axis=axis),
                                    permutation_type="samples", n_resamples=np.inf)
    assert pt["p_value"] == pytest.approx(direct.pvalue) and pt["diff"] == pytest.approx((va - vb).mean())


