"""timm registration, against a minimal stand-in for timm's registry (timm itself needs
torchvision, which has no CPU build here); the stand-in records what timm would be given."""
import sys
import types

import openmusk
from openmusk.model.timm_registry import register_timm


def test_register_timm_makes_configs_creatable(monkeypatch):
    registry = {}
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    models.register_model = lambda fn: registry.setdefault(fn.__name__, fn)
    models.is_model = lambda name: name in registry
    timm.models = models
    timm.__spec__ = types.SimpleNamespace(name="timm")
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.models", models)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "timm" else None)
    names = register_timm()
    assert "musk_large_patch16_384" in names and set(names) == set(registry)
    model = registry["musk_tiny_patch16_32"](pretrained=False)
    assert isinstance(model, openmusk.Musk) and model.config == openmusk.get_config("musk_tiny_patch16_32")
    assert register_timm() == names  # idempotent: nothing registered twice
