"""timm's conventions on MUSK (``register_timm``): num_classes=0, pretrained_cfg_overlay=dict(file=),
num_features, forward_features / forward_head, reset_classifier, model(x) a tensor, and a
pretrained_cfg giving 384 px and mean = std = 0.5. Real timm cannot be imported here (it needs
torchvision, which has no CPU build here), so timm's registry is a minimal stand-in that records
what timm would be given, and resolve_data_config's reading of ``pretrained_cfg`` is checked on
the keys it reads (timm 1.0 ``timm/data/config.py``)."""
from __future__ import annotations

import sys
import types

import pytest
import torch

import openmusk
from openmusk.model.timm_registry import TimmMusk, create_timm_model, register_timm

TINY = "musk_tiny_patch16_32"


def test_timm_interface(tiny_file, monkeypatch):
    model = create_timm_model(TINY, pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=tiny_file))
    ref = openmusk.create_model(pretrained=tiny_file)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model(x)
        assert isinstance(feats, torch.Tensor) and feats.shape == (2, model.num_features) == (2, 32)
        assert torch.allclose(feats, ref.encode_image(x, head=False, normalize=False), atol=1e-6)
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 5, 32) and torch.equal(model.forward_head(tokens, pre_logits=True), feats)
        # TRIDENT's call on a timm-made MUSK: the authors' keywords give their tuple
        vision, text = model(image=x, with_head=False, out_norm=False, ms_aug=False, return_global=True)
        assert text is None and torch.allclose(vision, feats, atol=1e-6)
        model.reset_classifier(3, global_pool="avg")
        logits = model(x)
        assert logits.shape == (2, 3) and model.get_classifier().out_features == 3
        assert torch.allclose(logits, model.head(tokens[:, 1:].mean(1)), atol=1e-6)
    # timm.data.resolve_data_config reads model.pretrained_cfg: input_size, interpolation, mean, std, crop_pct
    cfg = create_timm_model(TINY).pretrained_cfg
    big = openmusk.model.timm_registry.pretrained_cfg_for(openmusk.get_config("musk_large_patch16_384"))
    assert big["input_size"] == (3, 384, 384) and big["mean"] == big["std"] == (0.5, 0.5, 0.5)
    assert (big["interpolation"], big["crop_pct"], cfg["input_size"]) == ("bicubic", 1.0, (3, 32, 32))
    # pretrained=False ignores the file, as timm does; an unknown argument is named
    fresh = create_timm_model(TINY, pretrained_cfg_overlay=dict(file=tiny_file))
    assert not torch.equal(fresh.vision_head.weight, ref.vision_head.weight)
    with pytest.raises(TypeError, match="features_only"):
        create_timm_model(TINY, features_only=True)
    # timm.create_model(name, num_classes=0, pretrained_cfg_overlay=...) through the registry
    registry = {}
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    models.register_model = lambda fn: registry.setdefault(fn.__name__, fn)
    models.is_model = lambda name: name in registry
    timm.models = models
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.models", models)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "timm" else None)
    names = register_timm()
    assert "musk_large_patch16_384" in names and set(names) == set(registry)
    assert register_timm() == names  # idempotent: nothing registered twice
    made = registry[TINY](pretrained=True, pretrained_cfg=None, pretrained_cfg_overlay=dict(file=tiny_file),
                          cache_dir=None, num_classes=0)
    assert isinstance(made, TimmMusk) and torch.equal(made.vision_head.weight, ref.vision_head.weight)
