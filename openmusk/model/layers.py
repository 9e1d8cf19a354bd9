"""Building blocks of the MUSK (BEiT-3) multiway transformer.

Every normalisation, projection and FFN exists twice: expert ``A`` for image tokens, expert ``B``
for text tokens. A sequence is routed by slicing it at ``split`` (the number of leading image
tokens), so each token goes through one expert only. Module names mirror the released checkpoint
(``self_attn.q_proj.A.weight``...), so its state dict loads without renaming.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Multiway", "FeedForward", "MultiwayAttention", "EncoderLayer", "DropPath", "Packing"]


class Packing(NamedTuple):
    """Where the real (non-padded) tokens of a (B, L) batch sit once packed into one row.

    ``index`` holds the flat positions ``b * L + t`` of the kept tokens, in order; ``key_mask``
    (B, 1, 1, L) is True where attention may look.
    """

    index: torch.Tensor
    batch: int
    length: int
    key_mask: torch.Tensor


class Multiway(nn.Module):
    """Two copies of a module: ``A`` for the first ``split`` tokens (image), ``B`` for the rest (text)."""

    def __init__(self, make: Callable[[], nn.Module]):
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        n = x.shape[-2]
        if split >= n:
            return self.A(x)
        if split <= 0:
            return self.B(x)
        return torch.cat([self.A(x[..., :split, :]), self.B(x[..., split:, :])], dim=-2)


class FeedForward(nn.Module):
    """fc1 -> exact GELU (in float32) -> sub-LayerNorm -> fc2, as BEiT-3 with ``subln``."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.gelu(h.float()).to(h.dtype) if h.dtype != torch.float32 else F.gelu(h)
        return self.fc2(self.ffn_layernorm(h))


class MultiwayAttention(nn.Module):
    """Multi-head self-attention with multiway q/k/v/out projections and a sub-LayerNorm.

    Attention runs through ``scaled_dot_product_attention`` (scale head_dim^-0.5); padded keys
    are masked out. With a :class:`Packing`, the input holds only real tokens (1, N, D) and is
    scattered into (B, L) just for the attention product.
    """

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        linear = lambda: nn.Linear(dim, dim)  # noqa: E731
        self.k_proj = Multiway(linear)
        self.v_proj = Multiway(linear)
        self.q_proj = Multiway(linear)
        self.out_proj = Multiway(linear)
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(dim, eps=eps))

    def forward(self, x: torch.Tensor, split: int, key_mask: Optional[torch.Tensor] = None,
                packing: Optional[Packing] = None) -> torch.Tensor:
        q, k, v = self.q_proj(x, split), self.k_proj(x, split), self.v_proj(x, split)
        if packing is None:
            b, n, d = x.shape
            heads = lambda t: t.view(b, n, self.num_heads, -1).transpose(1, 2)  # noqa: E731
            o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=key_mask)
            o = o.transpose(1, 2).reshape(b, n, d)
        else:
            d = x.shape[-1]
            b, n = packing.batch, packing.length

            def heads(t: torch.Tensor) -> torch.Tensor:
                full = t.new_zeros(b * n, d).index_copy_(0, packing.index, t[0])
                return full.view(b, n, self.num_heads, -1).transpose(1, 2)

            o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=packing.key_mask)
            o = o.transpose(1, 2).reshape(b * n, d).index_select(0, packing.index).unsqueeze(0)
        return self.out_proj(self.inner_attn_ln(o, split), split)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EncoderLayer(nn.Module):
    """Pre-LN layer: ``x + attn(ln(x))`` then ``x + ffn(ln(x))``, every part multiway."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float, drop_path: float = 0.0):
        super().__init__()
        self.self_attn = MultiwayAttention(dim, num_heads, eps)
        self.self_attn_layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))
        self.ffn = Multiway(lambda: FeedForward(dim, ffn_dim, eps))
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(dim, eps=eps))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, split: int, key_mask: Optional[torch.Tensor] = None,
                packing: Optional[Packing] = None) -> torch.Tensor:
        x = x + self.drop_path(self.self_attn(self.self_attn_layer_norm(x, split), split, key_mask, packing))
        return x + self.drop_path(self.ffn(self.final_layer_norm(x, split), split))


def init_weights(module: nn.Module, depth: int) -> None:
    """BEiT-3 initialisation for training from scratch: truncated normal 0.02, sub-LN scaling."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    scale = math.sqrt(math.log(depth * 2))
    for name, p in module.named_parameters():
        if p.ndim == 2 and any(s in name for s in ("ffn.", "v_proj", "out_proj")):
            p.data.mul_(scale)
