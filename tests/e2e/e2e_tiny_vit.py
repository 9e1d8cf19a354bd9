"""A user's own encoder for the end-to-end test: a small ViT in plain torch (no timm), loadable as
``--encoder e2e_tiny_vit:tiny_vit``. The factory returns ``(nn.Module, transform)``."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn


class TinyViT(nn.Module):
    """Patch embedding, a CLS token, a few transformer layers; forward gives the (B, width) CLS."""

    def __init__(self, width: int, depth: int, img_size: int, patch: int):
        super().__init__()
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + (img_size // patch) ** 2, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.norm(self.blocks(tokens))[:, 0]


class ResizeToTensor:
    """PIL -> (3, S, S) float in [-1, 1] after a bilinear resize (picklable for DataLoader workers)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def tiny_vit(width: int = 48, depth: int = 2, img_size: int = 64, patch: int = 16,
             seed: int = 0) -> tuple[nn.Module, ResizeToTensor]:
    """A randomly initialised (seeded) tiny ViT and its transform."""
    torch.manual_seed(seed)
    return TinyViT(width, depth, img_size, patch).eval(), ResizeToTensor(img_size)
