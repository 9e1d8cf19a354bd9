"""Optional timm registration: ``timm.create_model("musk_large_patch16_384")`` returns a MUSK that
behaves like a timm model (``num_classes``, ``num_features``, ``forward_features``, ``forward_head``,
``reset_classifier``, ``pretrained_cfg``; ``model(x)`` returns a tensor).

timm is not a dependency (it pulls torchvision); registration only acts when timm can be imported.
The authors' keyword call ``model(image=x, with_head=..., out_norm=..., ms_aug=...)`` (TRIDENT's
MUSK encoder) still returns their ``(vision_cls, language_cls)`` tuple.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, Optional

import torch
from torch import nn

from .config import CONFIGS, MuskConfig, get_config
from .factory import create_model
from .hub import DEFAULT_WEIGHTS, resolve_weights
from .musk import Musk

__all__ = ["TimmMusk", "register_timm", "create_timm_model", "pretrained_cfg_for"]

GLOBAL_POOLS = ("token", "avg")
_KWARGS = ("num_classes", "global_pool", "img_size", "drop_path_rate", "in_chans", "device", "dtype")


def pretrained_cfg_for(config: MuskConfig, hf_hub_id: str = "xiangjx/musk") -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of a MUSK model: what ``timm.data.resolve_data_config`` reads
    (input size, bicubic, mean = std = 0.5, no crop margin) and where the weights live."""
    return {"architecture": None, "hf_hub_id": hf_hub_id, "file": None, "url": None,
            "input_size": (3, config.img_size, config.img_size), "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center",
            "num_classes": 0, "first_conv": "beit3.vision_embed.proj", "classifier": "head",
            "license": "cc-by-nc-nd-4.0"}


class TimmMusk(Musk):
    """MUSK with timm's model interface; pooled features are the final-LayerNorm CLS (``token``,
    the D-wide single-scale feature TRIDENT's ``musk`` gives) or the mean patch token (``avg``)."""

    def __init__(self, config: MuskConfig, num_classes: int = 0, global_pool: str = "token"):
        super().__init__(config)
        self.num_features = self.head_hidden_size = self.embed_dim = config.embed_dim
        self.num_prefix_tokens = 1
        self.num_classes = 0
        self.global_pool = "token"
        self.head: nn.Module = nn.Identity()
        self.pretrained_cfg = pretrained_cfg_for(config)
        self.reset_classifier(num_classes, global_pool)

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        """The classifier head (``nn.Identity`` when ``num_classes`` is 0)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new (randomly initialised) head of ``num_classes`` outputs; 0 removes it."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = int(num_classes)
        if self.num_classes:
            ref = self.beit3.vision_embed.proj.weight
            device = None if ref.is_meta else ref.device
            self.head = nn.Linear(self.num_features, self.num_classes, device=device, dtype=ref.dtype)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All image tokens after the final LayerNorm (B, 1 + P, D), CLS first."""
        return self.encode_image_tokens(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens (CLS or patch mean), then the classifier unless ``pre_logits``."""
        pooled = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: Optional[torch.Tensor] = None, **kwargs: Any):
        """timm: ``model(x)`` -> (B, num_classes) logits, or (B, D) features when ``num_classes`` is 0.
        With the authors' keywords (``image=``, ``text_description=``, ``with_head=`` ...) it is
        their ``MUSK.forward`` and returns ``(vision_cls, language_cls)``."""
        if kwargs or x is None:
            if x is not None:
                kwargs["image"] = x
            return super().forward(**kwargs)
        return self.forward_head(self.forward_features(x))


def create_timm_model(name: str, pretrained: bool = False, pretrained_cfg: Optional[dict] = None,
                      pretrained_cfg_overlay: Optional[dict] = None, cache_dir: Optional[str] = None,
                      **kwargs: Any) -> TimmMusk:
    """What ``timm.create_model(name, ...)`` builds for a MUSK name (callable without timm).

    ``pretrained=True`` loads ``pretrained_cfg_overlay={"file": ...}`` (or ``"hf_hub_id"``) when
    given, else the released weights; ``num_classes`` (default 0: pooled features), ``global_pool``,
    ``img_size`` (positions interpolated), ``drop_path_rate``, ``device`` and ``dtype`` as in timm.
    """
    unknown = sorted(set(kwargs) - set(_KWARGS))
    if unknown:
        raise TypeError(f"{name}: unsupported timm arguments {unknown}; supported: {', '.join(_KWARGS)}")
    if kwargs.get("in_chans", 3) != 3:
        raise ValueError(f"{name}: MUSK takes 3-channel images, got in_chans={kwargs['in_chans']}")
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, dict):
        raise ValueError(f"{name}: MUSK has no pretrained tags (got {pretrained_cfg!r}); pass "
                         "pretrained_cfg_overlay=dict(file=...) for other weights")
    cfg = {**(pretrained_cfg or {}), **(pretrained_cfg_overlay or {})}
    config = get_config(name)
    changes = {k: kwargs[k] for k in ("img_size", "drop_path_rate") if kwargs.get(k) is not None}
    if changes:
        config = dataclasses.replace(config, **changes)
    source = None
    if pretrained:
        source = cfg.get("file") or (f"hf_hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else DEFAULT_WEIGHTS)
        source = resolve_weights(source, cache_dir=cache_dir)
    model = create_model(config, pretrained=source, device=kwargs.get("device"), dtype=kwargs.get("dtype"),
                         model_cls=TimmMusk)
    model.pretrained_cfg = {**pretrained_cfg_for(config), **cfg, "architecture": name}
    model.reset_classifier(kwargs.get("num_classes") or 0, kwargs.get("global_pool"))
    return model


def _entry(name: str) -> Callable:
    def build(pretrained: bool = False, **kwargs: Any) -> TimmMusk:
        """timm-style constructor: ``pretrained=True`` loads the released weights (or the overlay's file)."""
        return create_timm_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    return build


def register_timm() -> list[str]:
    """Register every named MUSK config with timm's model registry; returns the names registered.

    A name timm knows already (e.g. from the authors' ``musk`` package) is left as it is.
    """
    if importlib.util.find_spec("timm") is None:
        return []
    from timm.models import is_model, register_model

    done = []
    for name in CONFIGS:
        if not is_model(name):
            register_model(_entry(name))
        done.append(name)
    return done
