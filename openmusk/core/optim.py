"""Optimiser set-up shared by pretraining, VQA fine-tuning and slide-level training.

The MUSK/BEiT-3 conventions: AdamW with no weight decay on norms, biases, embeddings and the
logit scale; optional layer-wise learning-rate decay; linear warm-up then cosine decay.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["no_decay", "param_groups", "build_adamw", "warmup_cosine", "musk_layer_id"]

_NO_DECAY_WORDS = ("norm", "embed", "cls_token", "mask_token", "logit_scale", "position")


def no_decay(name: str, param: torch.Tensor) -> bool:
    """True for parameters that should not be weight-decayed (1-d tensors, embeddings, tokens)."""
    return param.ndim <= 1 or name.endswith(".bias") or any(w in name for w in _NO_DECAY_WORDS)


def musk_layer_id(name: str, depth: int) -> int:
    """Layer index for layer-wise LR decay: 0 for embeddings, i+1 for encoder layer i, depth+1 else."""
    m = re.search(r"encoder\.layers\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if "embed" in name or name.endswith(("cls_token", "mask_token")):
        return 0
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 1.0,
                 depth: int | None = None,
                 layer_id: Callable[[str, int], int] = musk_layer_id) -> list[dict]:
    """AdamW parameter groups: decay / no-decay, each scaled by ``layer_decay ** (depth+1-id)``.

    With ``layer_decay=1`` this is plain decoupled weight decay with the usual exclusions.
    ``depth`` defaults to ``model.config.depth`` when the model has one.
    """
    if depth is None:
        depth = getattr(getattr(model, "config", None), "depth", 0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth) if layer_decay != 1.0 else 0
        nd = no_decay(name, p)
        g = groups.setdefault((lid, nd), {
            "params": [], "names": [], "weight_decay": 0.0 if nd else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - lid) if layer_decay != 1.0 else 1.0})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_adamw(groups: Iterable[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` output; each group's lr is ``lr * lr_scale``."""
    groups = [dict(g, lr=lr * g.get("lr_scale", 1.0)) for g in groups]
    for g in groups:
        g.pop("names", None)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0, warmup_start_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_start_ratio`` x peak (0: from 0) over ``warmup_steps``, then
    cosine decay to ``min_lr_ratio`` x peak."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_start_ratio + (1 - warmup_start_ratio) * (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
