"""Dataset specs (built-in and user YAML), encoders and the HDF5 feature cache, model comparisons."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import stats

import openmusk
from openmusk.eval.compare import compare_results
from openmusk.eval.encoders import CallableEncoder, MuskEncoder, OpenClipEncoder, TimmEncoder
from openmusk.eval.features import cache_path, cached_features, cached_text_features
from openmusk.eval.specs import (DatasetSpec, build_dataset, get_dataset_spec, list_dataset_specs,
                                 load_dataset_spec)
from openmusk.eval.tasks import classification_result, few_shot
from openmusk.core.stats import wilcoxon_paired_bootstrap


def test_registry_holds_the_papers_datasets_with_prompts():
    names = list_dataset_specs()
    for n in ("pcam", "skin", "pannuke", "unitopatho", "bracs3", "bracs6", "bookset", "pathmmu",
              "crc100k", "sicapv2", "osteo", "renalcell", "wsss4luad", "lc25000", "bach", "mhist"):
        assert n in names
    pcam = get_dataset_spec("pcam")
    assert pcam.prompts(1)[0] == "a histopathology slide showing Lymph node containing metastatic tumor tissue"
    bracs3 = get_dataset_spec("bracs3")
    assert bracs3.label_map["2_UDH"] == 0 and bracs3.label_map["6_IC"] == 2
    for n in names:  # every spec is self-consistent
        s = get_dataset_spec(n)
        assert s.tasks and (s.classes or s.caption_column)


def test_user_spec_yaml_and_its_errors(tmp_path, real_dir):
    img = Image.open(real_dir / "hgsc_nest.jpg").convert("RGB").crop((0, 0, 64, 64))
    for i in range(4):
        img.save(tmp_path / f"{i}.png")
    (tmp_path / "all.csv").write_text("file,grade,fold\n0.png,G3,a\n1.png,G4,a\n2.png,G3,b\n3.png,G5,b\n")
    spec = {"name": "mine", "format": "csv", "path": "all.csv", "image_column": "file",
            "label_column": "grade", "split_column": "fold", "classes": ["grade 3", "grade 4", "grade 5"],
            "label_map": {"G3": 0, "G4": 1, "G5": 2}, "tasks": ["linear_probe"]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(spec))
    s = get_dataset_spec(str(tmp_path / "mine.yaml"))
    ds = build_dataset(s, tmp_path, "b")
    assert ds.labels == [0, 2] and ds.keys == ["2.png", "3.png"] and ds.name == "mine"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**spec, "clases": ["x"]}))
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown key\(s\) \['clases'\]"):
        load_dataset_spec(tmp_path / "typo.yaml")
    with pytest.raises(ValueError, match="needs a '{c}' placeholder"):
        DatasetSpec(name="x", templates=["no placeholder"])
    with pytest.raises(KeyError, match="no dataset spec named 'pcamm'"):
        get_dataset_spec("pcamm")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return openmusk.create_model("musk_tiny_patch16_384")


def test_musk_encoder_gives_the_papers_two_feature_kinds(tiny):
    enc = MuskEncoder(tiny, name="tiny")
    x = torch.randn(2, 3, 384, 384)
    emb, probe = enc.encode_image(x, "embed"), enc.encode_image(x, "probe")
    assert torch.allclose(emb, tiny.encode_image(x, head=True, normalize=True), atol=1e-6)
    ref = tiny.encode_image(x, head=False, normalize=True, multiscale=True)
    assert probe.shape == (2, 2 * tiny.config.embed_dim) and torch.allclose(probe, ref, atol=1e-6)
    ids, pad = enc.tokenizer(["tumour", "stroma"], max_len=100)
    assert torch.allclose(enc.encode_text(["tumour", "stroma"]), tiny.encode_text(ids, pad), atol=1e-6)
    # CPU bfloat16 autocast (the GPU path's precision) stays close to float32
    bf = MuskEncoder(tiny, name="tiny", amp_dtype=torch.bfloat16).encode_image(x, "embed")
    assert bf.dtype == torch.float32 and torch.nn.functional.cosine_similarity(bf, emb).min() > 0.98
    with pytest.raises(ValueError, match="feature kind"):
        enc.encode_image(x, "logits")


def test_adapters_for_open_clip_and_timm_style_models():
    class ClipLike(torch.nn.Module):
        """The open_clip interface: encode_image(tensor), encode_text(token tensor)."""

        def __init__(self):
            super().__init__()
            self.visual, self.text = torch.nn.Linear(12, 4), torch.nn.Embedding(10, 4)

        def encode_image(self, x):
            return self.visual(x.flatten(1))

        def encode_text(self, tokens):
            return self.text(tokens).mean(1)

    m = ClipLike()
    enc = OpenClipEncoder(m, preprocess=None, tokenizer=lambda t: torch.tensor([[len(s) % 10] for s in t]))
    x = torch.randn(3, 3, 2, 2)
    assert torch.allclose(enc.encode_image(x), torch.nn.functional.normalize(m.encode_image(x), dim=-1))
    assert enc.has_text and enc.encode_text(["ab", "abc"]).shape == (2, 4)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    t = TimmEncoder(net, transform=None)
    assert not t.has_text and torch.allclose(t.encode_image(x, "probe").norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="num_classes=0"):
        TimmEncoder(torch.nn.Conv2d(3, 5, 1), transform=None).encode_image(x)


def test_feature_cache_is_keyed_reused_and_rebuilt(tmp_path, real_dir):
    img = Image.open(real_dir / "hgsc_stromal_he.jpg").convert("RGB")
    for i in range(5):
        (tmp_path / "d" / "stroma").mkdir(parents=True, exist_ok=True)
        img.crop((i * 50, 0, i * 50 + 32, 32)).save(tmp_path / "d" / "stroma" / f"{i}.png")
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
    assert sum(calls) == 5
    path = cache_path(tmp_path / "cache", "mean_rgb", "stroma_tiles", None, "embed")
    assert path.is_file()
    b = cached_features(enc, ds, None, "embed", tmp_path / "cache", num_workers=0, progress=False)
    assert sum(calls) == 5 and np.array_equal(a.features, b.features)  # read back, not recomputed
    ref = np.stack([np.asarray(ds.load_image(i), dtype=np.float32).mean((0, 1)) / 255 for i in range(5)])
    assert np.allclose(a.features, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)
    img.crop((0, 0, 32, 32)).save(tmp_path / "d" / "stroma" / "9.png")  # the dataset grew
    c = cached_features(enc, build_dataset(spec, tmp_path / "d"), None, "embed", tmp_path / "cache",
                        num_workers=0, progress=False)
    assert len(c.features) == 6 and sum(calls) == 11
    t1 = cached_text_features(enc, ["a", "b"], "stroma_tiles", None, tmp_path / "cache")
    assert t1.shape == (2, 3)


def test_paired_comparisons_match_direct_scipy_tests():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    good = np.where(rng.random(120) < 0.9, y, (y + 1) % 3)
    poor = np.where(rng.random(120) < 0.5, y, (y + 1) % 3)
    a = classification_result("linear_probe", y, good, n_resamples=100)
    b = classification_result("linear_probe", y, poor, n_resamples=100)
    tests = compare_results(a, b, n_resamples=300, seed=1)
    from openmusk.eval.metrics import CLASSIFICATION_METRICS
    ref = wilcoxon_paired_bootstrap(CLASSIFICATION_METRICS["balanced_accuracy"], (y, good), (y, poor),
                                    n_resamples=300, seed=1)
    assert tests["balanced_accuracy"] == ref
    assert ref["p_value"] < 1e-10 and ref["mean_difference"] > 0.2
    assert compare_results(a, a, n_resamples=50)["accuracy"]["p_value"] == 1.0
    x = rng.normal(size=(60, 6)) + np.repeat(np.eye(3, 6) * 3, 20, axis=0)
    yy = np.repeat(np.arange(3), 20)
    fa = few_shot(x[::2], yy[::2], x[1::2], yy[1::2], shots=(2,), seeds=range(5))
    fb = few_shot(rng.normal(size=(30, 6)), yy[::2], x[1::2], yy[1::2], shots=(2,), seeds=range(5))
    mw = compare_results(fa, fb)["balanced_accuracy@2shot"]
    direct = stats.mannwhitneyu(fa["per_sample"]["per_seed"]["2"]["balanced_accuracy"],
                                fb["per_sample"]["per_seed"]["2"]["balanced_accuracy"],
                                alternative="two-sided")
    assert mw["p_value"] == pytest.approx(direct.pvalue) and mw["statistic"] == direct.statistic


def test_split_transform_pipeline_gives_exactly_the_plain_transform_features(tiny, tmp_path, real_dir):
    from openmusk.data.datasets import ImageFolderDataset
    from openmusk.eval.features import extract_features

    img = Image.open(real_dir / "he_tumor_1000px.png").convert("RGB")
    (tmp_path / "t").mkdir()
    for i in range(3):  # odd sizes: resize and crop both matter
        img.crop((i * 90, 0, i * 90 + 200 + 17 * i, 230)).save(tmp_path / "t" / f"{i}.png")
    enc = MuskEncoder(tiny, name="tiny")
    ds = ImageFolderDataset(tmp_path)
    fs = extract_features(enc, ds, batch_size=2, num_workers=2, progress=False)
    plain = torch.stack([enc.transform(ds.load_image(i)) for i in range(3)])
    staged = enc.batch_transform(torch.stack([enc.worker_transform(ds.load_image(i)) for i in range(3)]))
    assert torch.equal(plain, staged)
    every_value = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(1, 16, 16, 3)
    from openmusk.data.transforms import normalize
    assert torch.equal(enc.batch_transform(every_value),
                       normalize(every_value.permute(0, 3, 1, 2).float().div(255)))
    assert np.allclose(fs.features, enc.encode_image(plain).numpy(), atol=1e-6)
