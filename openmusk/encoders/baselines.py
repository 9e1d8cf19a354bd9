"""Encoders with no learning, that every result must beat to show more than colour."""
from __future__ import annotations

import torch

from openmusk.encoders.base import CallableEncoder, register_encoder

__all__ = ["color_stats_encoder"]


@register_encoder("color_stats", "stain-colour baseline: per-channel histograms and moments (no learning)")
def color_stats_encoder(img_size: int = 224, bins: int = 8, name: str = "color_stats") -> CallableEncoder:
    """Per-channel histograms and moments of the image; image-only."""
    from openmusk.data.transforms import get_transform

    edges = torch.linspace(-1.0, 1.0, bins + 1)[1:-1]

    def image_fn(x: torch.Tensor) -> torch.Tensor:
        flat = x.float().flatten(2).contiguous()  # (B, 3, HW), values in [-1, 1]
        idx = torch.bucketize(flat, edges)
        hist = torch.zeros(*flat.shape[:2], bins).scatter_add_(2, idx, torch.ones_like(flat))
        hist = hist / flat.shape[-1]
        return torch.cat([hist.flatten(1), flat.mean(-1), flat.std(-1)], dim=1)

    enc = CallableEncoder(name, image_fn, get_transform(img_size=img_size))
    enc.img_size = img_size
    return enc
