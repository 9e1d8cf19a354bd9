"""Reduced-precision inference: the weights cast to bf16/fp16 once, the sensitive parts in float32.

Autocast re-casts every weight on every call, a fixed cost per forward that dominates short
sequences (100-token texts ran at 0.87x the authors' model cast once to bf16). For inference
(slide extraction, embedding, evaluation) :func:`cast_for_inference` casts the model once instead
and keeps in float32 what loses accuracy in 8 mantissa bits: every LayerNorm normalises in
float32 with float32 weights (:class:`Float32LayerNorm`), GELU runs in float32
(``layers.FeedForward``), and the attention softmax runs inside ``scaled_dot_product_attention``,
whose fused kernels accumulate in float32. Inputs in float32 (pixels, features given to a head)
are cast to the weights' dtype on the way in. Training keeps autocast (``core.runtime.autocast``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openmusk.core.runtime import precision_dtype

__all__ = ["Float32LayerNorm", "cast_for_inference", "inference_dtype"]


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (weights too) whatever the input's dtype; returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return out.to(x.dtype)


def _cast_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: a floating input of another dtype is cast to the module's weight dtype."""
    x = args[0] if args else None
    dtype = module.weight.dtype
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return (x.to(dtype), *args[1:])
    return None


def cast_for_inference(model: nn.Module, precision: str) -> nn.Module:
    """``model`` (in place, in eval mode) for inference at ``precision``: fp32 leaves it as it is;
    bf16/fp16 cast its weights once, with LayerNorms in float32. Outputs come in that dtype
    (``.float()`` them); the model is meant for inference only from then on."""
    dtype = precision_dtype(precision)
    model.eval()
    if dtype == torch.float32 or getattr(model, "inference_dtype", None) == dtype:
        return model
    for m in model.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = Float32LayerNorm   # same parameters, float32 arithmetic
    model.to(dtype)
    for m in model.modules():
        if isinstance(m, Float32LayerNorm):
            m.float()
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            m.register_forward_pre_hook(_cast_input)
    model.inference_dtype = dtype
    return model


def inference_dtype(model: Any) -> torch.dtype:
    """The dtype :func:`cast_for_inference` gave ``model`` (float32 when it was not cast)."""
    return getattr(model, "inference_dtype", torch.float32)
