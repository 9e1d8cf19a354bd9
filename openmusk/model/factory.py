"""``create_model``: a MUSK model from a config name, a config, a checkpoint, or both; and
open_clip's entry points (``create_model_and_transforms``, ``create_model_from_pretrained``,
``list_models``, ``list_pretrained``) for users who come with its habits."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch

from .checkpoint import config_from_checkpoint, load_checkpoint
from .config import CONFIGS, MuskConfig, get_config, list_configs
from .hub import DEFAULT_WEIGHTS, is_hub_source, resolve_weights
from .musk import Musk

__all__ = ["create_model", "create_model_and_transforms", "create_model_from_pretrained", "list_models",
           "list_pretrained"]


def create_model(name_or_config: Optional[str | MuskConfig | dict] = None,
                 pretrained: Optional[str | os.PathLike] = None,
                 device: Optional[str | torch.device] = None,
                 dtype: Optional[torch.dtype] = None, model_cls: type[Musk] = Musk) -> Musk:
    """Build a :class:`Musk` (in eval mode).

    * ``create_model("musk_large_patch16_384")``: random weights (for pretraining or tests).
    * ``create_model(pretrained="hf_hub:xiangjx/musk")`` or a local path: the architecture is read
      from the checkpoint (our metadata, else its tensor shapes), weights loaded without a copy.
    * both: the given architecture, loaded from the checkpoint (vision positions are interpolated
      when the image size differs).
    * ``pretrained="random"`` or ``"random:CONFIG"``: random weights spelled like a checkpoint, so a
      ``--weights`` flag or ``weights:`` key can ask for them (tests, benchmarks, pretraining).
    * ``create_model("hf-hub:xiangjx/musk")``: open_clip's spelling of the second form.

    ``model_cls`` builds a subclass of :class:`Musk` with the same tensors (e.g. the timm interface).
    """
    if isinstance(name_or_config, str) and is_hub_source(name_or_config):  # open_clip's create_model("hf-hub:...")
        if pretrained is not None:
            raise ValueError(f"create_model({name_or_config!r}) names its weights already; pretrained="
                             f"{pretrained!r} would contradict it")
        name_or_config, pretrained = None, name_or_config
    if pretrained is not None and str(pretrained).startswith("random"):
        named = str(pretrained).partition(":")[2]
        name_or_config, pretrained = (named or name_or_config or "musk_large_patch16_384"), None
    path = resolve_weights(pretrained) if pretrained is not None else None
    if name_or_config is None:
        config = config_from_checkpoint(path) if path else get_config("musk_large_patch16_384")
    elif isinstance(name_or_config, str):
        config = get_config(name_or_config)
    elif isinstance(name_or_config, dict):
        config = MuskConfig.from_dict(name_or_config)
    elif isinstance(name_or_config, MuskConfig):
        config = name_or_config
    else:
        raise TypeError(f"name_or_config must be a name, MuskConfig or dict, got {type(name_or_config).__name__}")
    if path is None:
        model = model_cls(config)
        if dtype is not None:
            model = model.to(dtype)
    else:
        with torch.device("meta"):
            model = model_cls(config)
        if dtype is not None:
            model = model.to(dtype)
        load_checkpoint(model, path)
    if device is not None:
        model = model.to(device)
    return model.eval()


def list_models() -> list[str]:
    """Model names ``create_model`` builds (open_clip's ``list_models``)."""
    return list_configs()


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """(model name, pretrained source) pairs with released weights (open_clip's ``list_pretrained``)."""
    pairs = [("musk_large_patch16_384", DEFAULT_WEIGHTS)]
    return [f"{n}:{t}" for n, t in pairs] if as_str else pairs


class TrainTransform:
    """PIL image -> augmented model tensor with the paper's pathology augmentations (crop, flips,
    jitter, greyscale); each call draws its seed from torch's generator, so ``seed_everything``
    and per-worker DataLoader seeds make it reproducible."""

    def __init__(self, img_size: int):
        from openmusk.data.augment import AugmentConfig, PathologyAugment

        self.augment = PathologyAugment(AugmentConfig(img_size=img_size))

    def __call__(self, img) -> torch.Tensor:
        import numpy as np

        seed = int(torch.randint(0, 2 ** 62, ()).item())
        return self.augment(img, np.random.default_rng(seed))


def create_model_and_transforms(model_name: Optional[str] = None, pretrained: Optional[str | os.PathLike] = None,
                                device: Optional[str | torch.device] = None,
                                precision: Optional[str] = None, **kwargs: Any
                                ) -> tuple[Musk, Callable, Callable]:
    """open_clip's ``create_model_and_transforms``: ``(model, preprocess_train, preprocess_val)``.

    ``model_name`` is a ``list_models()`` name or ``hf-hub:xiangjx/musk`` (weights included);
    ``pretrained`` a source from ``list_pretrained()``, a path or ``random``. ``precision`` is
    open_clip's ``fp32`` / ``fp16`` / ``bf16`` (the weights' dtype).
    """
    from openmusk.data.transforms import get_transform

    model = _create(model_name, pretrained, device, precision, **kwargs)
    size = model.config.img_size
    return model, TrainTransform(size), get_transform(img_size=size)


def create_model_from_pretrained(model_name: Optional[str] = None, pretrained: Optional[str | os.PathLike] = None,
                                 device: Optional[str | torch.device] = None, precision: Optional[str] = None,
                                 return_transform: bool = True, **kwargs: Any) -> Musk | tuple[Musk, Callable]:
    """open_clip's ``create_model_from_pretrained``: ``(model, preprocess)`` with weights loaded
    (the released ones when neither the name nor ``pretrained`` says where they are)."""
    from openmusk.data.transforms import get_transform

    if pretrained is None and not (model_name and is_hub_source(model_name)):
        pretrained = DEFAULT_WEIGHTS
    model = _create(model_name, pretrained, device, precision, **kwargs)
    return (model, get_transform(img_size=model.config.img_size)) if return_transform else model


_PRECISIONS = {None: None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
               "pure_fp16": torch.float16, "pure_bf16": torch.bfloat16}


def _create(model_name: Optional[str], pretrained: Optional[str | os.PathLike], device: Any,
            precision: Optional[str], **kwargs: Any) -> Musk:
    """``create_model`` with open_clip's argument names (unknown ones named in a TypeError)."""
    if kwargs:
        raise TypeError(f"unsupported arguments {sorted(kwargs)}; openmusk takes model_name, pretrained, "
                        "device, precision")
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {[p for p in _PRECISIONS if p]}, got {precision!r}")
    if model_name is not None and model_name not in CONFIGS and not is_hub_source(model_name):
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(list_models())} or hf-hub:owner/name")
    return create_model(model_name, pretrained=pretrained, device=device, dtype=_PRECISIONS[precision])
