"""The pathology encoders the paper compared: PLIP through the real transformers code path on a tiny
randomly initialised CLIP of PLIP's architecture (built offline), checked against the model's own
towers; the preprocessing against transformers' independent implementation; the Virchow pooling;
the libraries that cannot install here named in the error; timm's conventions on MUSK through our
timm adapter (real timm needs torchvision, which has no CPU build here: a minimal stand-in for
timm's create_model/resolve_data_config dispatch is used, so this checks our side of the contract)."""
from __future__ import annotations

import importlib.util
import string
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openmusk.encoders import load_encoder
from openmusk.encoders.pathology import ClsMeanPatch, PathologyTransform


@pytest.fixture(scope="module")
def tiny_plip(tmp_path_factory):
    """A CLIP of PLIP's kind (ViT vision tower, CLIP text tower, projections), tiny, saved as a hub folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("plip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) for c in string.ascii_lowercase})
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=24, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1, **tower),
                     vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_plip_through_transformers_matches_the_models_own_towers(tiny_plip):
    from transformers import AutoTokenizer, CLIPModel

    enc = load_encoder("plip", model=tiny_plip)
    ref = CLIPModel.from_pretrained(tiny_plip).eval()
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 36, 3), dtype=np.uint8)) for i in range(3)]
    x = torch.stack([enc.transform(im) for im in imgs])
    texts = ["tumor", "stroma with vessels"]
    batch = AutoTokenizer.from_pretrained(tiny_plip)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = ref.visual_projection(ref.vision_model(pixel_values=x).pooler_output)
        txt = ref.text_projection(ref.text_model(**batch).pooler_output)
    assert torch.allclose(enc.encode_image(x), F.normalize(img, dim=-1), atol=1e-5)
    assert torch.allclose(enc.encode_image(x, "probe"), F.normalize(img, dim=-1), atol=1e-5)
    assert torch.allclose(enc.encode_text(texts), F.normalize(txt, dim=-1), atol=1e-5)
    assert enc.has_text and enc.dim() == 16 and enc.spec["encoder"] == "plip"
    random = load_encoder("plip", model=tiny_plip, weights=False)   # the architecture, fresh weights
    assert not torch.allclose(random.encode_image(x), enc.encode_image(x), atol=1e-3)


def test_pathology_transform_equals_transformers_clip_preprocessing():
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ours = PathologyTransform(32, 32, mean=proc.image_mean, std=proc.image_std, interpolation="bicubic")
    rng = np.random.default_rng(1)
    for shape in ((57, 41, 3), (30, 64, 3)):
        img = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))
        assert torch.allclose(ours(img), proc(images=img, return_tensors="pt")["pixel_values"][0], atol=1e-6)


def test_virchow_embedding_is_cls_then_mean_of_patch_tokens_without_registers():
    tokens = torch.randn(2, 5 + 16, 8)
    pooled = ClsMeanPatch(torch.nn.Identity(), num_prefix_tokens=5)(tokens)
    assert torch.equal(pooled[:, :8], tokens[:, 0])
    assert torch.allclose(pooled[:, 8:], tokens[:, 5:].sum(1) / 16)


@pytest.mark.parametrize("name,install", [("uni", "pip install timm"), ("virchow2", "pip install timm"),
                                          ("gigapath", "pip install timm"), ("biomedclip", "open_clip_torch"),
                                          ("conch", "mahmoodlab/CONCH")])
def test_missing_libraries_are_named(name, install):
    module = {"biomedclip": "open_clip", "conch": "conch"}.get(name, "timm")
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ImportError, match=install.replace(".", r"\.")):
        load_encoder(name)


def _timm_stand_in(monkeypatch):
    """timm's create_model -> registered entrypoint, and resolve_data_config's rule (model.pretrained_cfg
    over 224 px / ImageNet defaults), as timm 1.0 reads them."""
    from openmusk.model.timm_registry import register_timm

    registry = {}
    timm = types.ModuleType("timm")
    timm.models = types.SimpleNamespace(register_model=lambda fn: registry.setdefault(fn.__name__, fn),
                                        is_model=lambda n: n in registry)
    timm.create_model = lambda name, pretrained=False, **kw: registry[name](pretrained=pretrained, **kw)

    def resolve_data_config(args, model):
        cfg = getattr(model, "pretrained_cfg", {})
        return {"input_size": cfg.get("input_size", (3, 224, 224)), "mean": cfg.get("mean", (0.485, 0.456, 0.406)),
                "std": cfg.get("std", (0.229, 0.224, 0.225)), "interpolation": cfg.get("interpolation", "bicubic"),
                "crop_pct": cfg.get("crop_pct", 0.875)}

    def create_transform(input_size, mean, std, interpolation, crop_pct):
        return PathologyTransform(int(input_size[-1] / crop_pct), input_size[-1], mean, std, interpolation)

    timm.data = types.SimpleNamespace(resolve_data_config=resolve_data_config, create_transform=create_transform)
    for mod, value in (("timm", timm), ("timm.models", timm.models), ("timm.data", timm.data)):
        monkeypatch.setitem(sys.modules, mod, value)
    monkeypatch.setattr("importlib.util.find_spec", lambda n, *a: object() if n == "timm" else None)
    register_timm()


def test_eval_timm_entry_wraps_musk_and_pretrained_false_loads_nothing(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    from openmusk.eval.config import ModelEntry
    from openmusk.model import create_model

    _timm_stand_in(monkeypatch)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    ref = create_model("musk_tiny_patch16_32")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(ckpt))
    x = torch.randn(2, 3, 32, 32)
    loaded = ModelEntry(name="m", kind="timm", model="musk_tiny_patch16_32", pretrained=str(ckpt)).build()
    with torch.no_grad():
        want = F.normalize(ref.encode_image(x, head=False, normalize=False), dim=-1)
    assert torch.allclose(loaded.encode_image(x, "probe"), want, atol=1e-5)
    assert loaded.encode_patches(x).shape == (2, 4, 32)          # forward_features without the CLS
    mean = loaded.transform.mean.flatten().tolist()
    assert loaded.transform.img_size == 32 and mean == pytest.approx([0.5] * 3)
    fresh = ModelEntry(name="r", kind="timm", model="musk_tiny_patch16_32", pretrained=False).build()
    assert not torch.allclose(fresh.encode_image(x, "probe"), want, atol=1e-3)
