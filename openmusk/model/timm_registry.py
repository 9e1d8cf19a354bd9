"""Optional timm registration: ``timm.create_model("musk_large_patch16_384")`` returns a :class:`Musk`.

timm is not a dependency (it pulls torchvision); this only acts when timm can be imported.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

from .config import CONFIGS
from .factory import create_model
from .hub import DEFAULT_WEIGHTS

__all__ = ["register_timm"]


def _entry(name: str) -> Callable:
    def build(pretrained: bool = False, **kwargs):
        """timm-style constructor: ``pretrained=True`` loads the released weights."""
        unknown = set(kwargs) - {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"}
        if unknown:
            raise TypeError(f"{name}: unsupported timm arguments {sorted(unknown)}")
        return create_model(name, pretrained=DEFAULT_WEIGHTS if pretrained else None)

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    return build


def register_timm() -> list[str]:
    """Register every named MUSK config with timm's model registry; returns the names registered."""
    if importlib.util.find_spec("timm") is None:
        return []
    from timm.models import register_model, is_model

    done = []
    for name in CONFIGS:
        if not is_model(name):
            register_model(_entry(name))
        done.append(name)
    return done
