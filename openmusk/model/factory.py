"""``create_model``: a MUSK model from a config name, a config, a checkpoint, or both."""
from __future__ import annotations

import os
from typing import Optional

import torch

from .checkpoint import config_from_checkpoint, load_checkpoint
from .config import MuskConfig, get_config
from .hub import resolve_weights
from .musk import Musk

__all__ = ["create_model"]


def create_model(name_or_config: Optional[str | MuskConfig | dict] = None,
                 pretrained: Optional[str | os.PathLike] = None,
                 device: Optional[str | torch.device] = None,
                 dtype: Optional[torch.dtype] = None) -> Musk:
    """Build a :class:`Musk` (in eval mode).

    * ``create_model("musk_large_patch16_384")``: random weights (for pretraining or tests).
    * ``create_model(pretrained="hf_hub:xiangjx/musk")`` or a local path: the architecture is read
      from the checkpoint (our metadata, else its tensor shapes), weights loaded without a copy.
    * both: the given architecture, loaded from the checkpoint (vision positions are interpolated
      when the image size differs).
    * ``pretrained="random"`` or ``"random:CONFIG"``: random weights spelled like a checkpoint, so a
      ``--weights`` flag or ``weights:`` key can ask for them (tests, benchmarks, pretraining).
    """
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
        model = Musk(config)
        if dtype is not None:
            model = model.to(dtype)
    else:
        with torch.device("meta"):
            model = Musk(config)
        if dtype is not None:
            model = model.to(dtype)
        load_checkpoint(model, path)
    if device is not None:
        model = model.to(device)
    return model.eval()
