"""Slide-level models: bag aggregators (gated ABMIL, TransMIL, mean pooling) and the MIL head.

An *aggregator* turns a bag of instance features into one slide embedding and per-instance
attention; everything before the prediction head lives in it, so a pretrained aggregator (e.g. from
mSTAR) can be loaded by name with :func:`load_aggregator`. Every aggregator has the same call:

    aggregator(features, mask=None) -> (slide_embedding, attention)

``features`` is (N, D) for one bag or (B, N, D) for a padded batch; ``mask`` (B, N) bool is True on
real instances and False on padding. The slide embedding is (B, out_dim) and the attention (B, N)
sums to 1 over the real instances of each bag.

``aggregator.tokens(features)`` gives the aggregator's output token of every instance of one bag,
(N, D) -> (N, out_dim): what it pools (ABMIL, mean pooling) or its final contextual tokens
(TransMIL). mSTAR's self-taught stage uses them as targets.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ABMIL", "TransMIL", "MeanPool", "MilModel", "AGGREGATORS", "build_aggregator",
           "load_aggregator", "save_aggregator"]


def _as_batch(features: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) or (B, N, D) features and optional mask -> (B, N, D) and a (B, N) bool mask."""
    if features.ndim == 2:
        features = features.unsqueeze(0)
        mask = None if mask is None else mask.reshape(1, -1)
    if features.ndim != 3:
        raise ValueError(f"features must be (N, D) or (B, N, D), got shape {tuple(features.shape)}")
    if mask is None:
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    if mask.shape != features.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match features "
                         f"{tuple(features.shape[:2])}")
    return features, mask.bool()


def _one_bag(features: torch.Tensor) -> torch.Tensor:
    """One bag (N, D) or (1, N, D) -> (1, N, D); anything else is an error."""
    x = features.unsqueeze(0) if features.ndim == 2 else features
    if x.ndim != 3 or x.shape[0] != 1:
        raise ValueError(f"tokens() takes one bag (N, D), got shape {tuple(features.shape)}")
    return x


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in float32, ignoring positions where ``mask`` is False."""
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


class ABMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018) as MUSK states it: FC 512 + ReLU, gated attention 384.

    ``in_dim`` is the instance feature size (2048 for MUSK multiscale features), ``hidden_dim`` the
    FC width (= ``out_dim``), ``attention_dim`` the gated-attention width, ``dropout`` after the FC
    and in both attention branches.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, attention_dim: int = 384,
                 dropout: float = 0.25):
        super().__init__()
        self.out_dim = hidden_dim
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_a = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh(),
                                         nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Sigmoid(),
                                         nn.Dropout(dropout))
        self.attention_c = nn.Linear(attention_dim, 1)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """The projected instances of one bag that the attention pools: (N, D) -> (N, hidden)."""
        return self.fc(_one_bag(features))[0]

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention-weighted sum of the projected instances -> ((B, hidden), (B, N))."""
        x, mask = _as_batch(features, mask)
        h = self.fc(x)
        scores = self.attention_c(self.attention_a(h) * self.attention_b(h)).squeeze(-1)
        attn = _masked_softmax(scores, mask)
        return torch.einsum("bn,bnd->bd", attn.to(h.dtype), h), attn


class MeanPool(nn.Module):
    """Baseline: FC + ReLU per instance, then the mean over the bag (uniform attention)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, dropout: float = 0.25):
        super().__init__()
        self.out_dim = hidden_dim
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """The projected instances of one bag that the mean pools: (N, D) -> (N, hidden)."""
        return self.fc(_one_bag(features))[0]

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked mean of the projected instances -> ((B, hidden), (B, N))."""
        x, mask = _as_batch(features, mask)
        attn = mask.float() / mask.sum(-1, keepdim=True).clamp(min=1)
        return torch.einsum("bn,bnd->bd", attn.to(x.dtype), self.fc(x)), attn


def _pinv_iter(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse by the Newton-Schulz iteration used in Nystromformer."""
    abs_x = x.abs()
    z = x.transpose(-1, -2) / (abs_x.sum(-1).amax() * abs_x.sum(-2).amax())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Nystrom self-attention (Xiong et al. 2021), linear in sequence length, as TransMIL uses it."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, landmarks: int = 256,
                 pinv_iterations: int = 6, residual_kernel: int = 33, dropout: float = 0.1):
        super().__init__()
        self.heads, self.dim_head, self.landmarks = heads, dim_head, landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(heads, heads, (residual_kernel, 1),
                                  padding=(residual_kernel // 2, 0), groups=heads, bias=False)

    def forward(self, x: torch.Tensor, cls_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n, dim) -> (B, n, dim), and with ``cls_attention`` the (B, n) attention of token 0."""
        b, n, _ = x.shape
        m = self.landmarks
        pad = (m - n % m) % m
        x = F.pad(x, (0, 0, pad, 0))
        q, k, v = (t.reshape(b, -1, self.heads, self.dim_head).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        q = q * self.scale
        group = x.shape[1] // m
        q_l = q.reshape(b, self.heads, m, group, self.dim_head).mean(3)
        k_l = k.reshape(b, self.heads, m, group, self.dim_head).mean(3)
        attn1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)
        attn2_inv = _pinv_iter(torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1),
                               self.pinv_iterations)
        attn3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
        out = (attn1 @ attn2_inv) @ (attn3 @ v) + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head))[:, -n:]
        cls = None
        if cls_attention:
            cls = ((attn1[:, :, pad:pad + 1] @ attn2_inv) @ attn3).mean(1)[:, 0, -n:]
        return out, cls


class _PPEG(nn.Module):
    """TransMIL's pyramid position encoding: depthwise 7/5/3 convolutions over the square grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """Tokens (B, 1 + side^2, dim), CLS first -> same shape with positions mixed in."""
        cls, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        grid = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class _TransLayer(nn.Module):
    """Pre-norm Nystrom attention block with a residual connection."""

    def __init__(self, dim: int, heads: int, landmarks: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads=heads, dim_head=dim // heads, landmarks=landmarks,
                                     dropout=dropout)

    def forward(self, x: torch.Tensor, cls_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x + attention(norm(x)), and optionally the CLS attention row."""
        out, cls = self.attn(self.norm(x), cls_attention)
        return x + out, cls


class TransMIL(nn.Module):
    """TransMIL (Shao et al. 2021): FC 512 + ReLU, CLS token, two Nystrom layers around PPEG.

    ``in_dim`` instance feature size, ``hidden_dim`` token width (= ``out_dim``), ``heads`` attention
    heads, ``landmarks`` Nystrom landmarks (hidden_dim // 2 in the paper). The returned attention is
    the CLS row of the last layer's (approximate) attention, averaged over heads.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, heads: int = 8,
                 landmarks: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.out_dim = hidden_dim
        landmarks = landmarks or hidden_dim // 2
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        self.layer1 = _TransLayer(hidden_dim, heads, landmarks, dropout)
        self.pos = _PPEG(hidden_dim)
        self.layer2 = _TransLayer(hidden_dim, heads, landmarks, dropout)
        self.norm = nn.LayerNorm(hidden_dim)

    def _encode(self, x: torch.Tensor, cls_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One bag (1, N, D) -> final-normed tokens (1, 1 + side^2, hidden), CLS first, and optionally
        the last layer's CLS attention row."""
        n = x.shape[1]
        h = self.fc(x)
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:  # fill the square grid by repeating the first instances, as TransMIL does
            h = torch.cat([h, h[:, :extra].repeat(1, math.ceil(extra / n), 1)[:, :extra]], dim=1)
        h = torch.cat([self.cls_token.expand(1, -1, -1).to(h.dtype), h], dim=1)
        h, _ = self.layer1(h)
        h = self.pos(h, side)
        h, cls = self.layer2(h, cls_attention=cls_attention)
        return self.norm(h), cls

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Each instance's final token of one bag, after both Nystrom layers, PPEG and the norm (every
        token sees the whole bag): (N, D) -> (N, hidden)."""
        x = _one_bag(features)
        return self._encode(x)[0][0, 1:x.shape[1] + 1]

    def _one(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One bag (1, N, D) -> ((1, hidden), (1, N))."""
        n = x.shape[1]
        h, cls = self._encode(x, cls_attention=True)
        attn = cls[:, 1:n + 1].float().clamp(min=0)
        attn = attn / attn.sum(-1, keepdim=True).clamp(min=1e-12)
        return h[:, 0], attn

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each bag runs on its real instances only -> ((B, hidden), (B, N), zero on padding)."""
        x, mask = _as_batch(features, mask)
        embs, attns = [], torch.zeros(mask.shape, device=x.device)
        for i in range(x.shape[0]):
            idx = mask[i].nonzero().squeeze(-1)
            if len(idx) == 0:
                raise ValueError(f"bag {i} of the batch has no instances")
            e, a = self._one(x[i:i + 1, idx])
            embs.append(e)
            attns[i, idx] = a[0]
        return torch.cat(embs), attns


AGGREGATORS: dict[str, type[nn.Module]] = {"abmil": ABMIL, "transmil": TransMIL, "meanpool": MeanPool}


def build_aggregator(name: str, in_dim: int, hidden_dim: int = 512, attention_dim: int = 384,
                     dropout: float = 0.25) -> nn.Module:
    """An aggregator by name ('abmil', 'transmil', 'meanpool') with the paper's widths by default."""
    if name == "abmil":
        return ABMIL(in_dim, hidden_dim, attention_dim, dropout)
    if name == "transmil":
        return TransMIL(in_dim, hidden_dim)
    if name == "meanpool":
        return MeanPool(in_dim, hidden_dim, dropout)
    raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")


class MilModel(nn.Module):
    """Slide and/or report -> outputs: aggregator, then a linear head or a fusion MLP.

    ``modality`` 'image' uses the slide embedding with a linear head (the paper's ABMIL), 'text'
    the report embedding and 'both' their concatenation, each through a small MLP
    (Linear(d, fusion_hidden), ReLU, Dropout, Linear(fusion_hidden, n_outputs)).
    ``forward(batch)`` takes a batch dict (``features`` (B, N, D), ``mask`` (B, N), ``report``
    (B, E)) and returns ``{"logits": (B, n_outputs), "attention": (B, N) or None}``.
    """

    def __init__(self, aggregator: nn.Module | None, n_outputs: int, modality: str = "image",
                 report_dim: int = 0, fusion_hidden: int = 256, dropout: float = 0.25):
        super().__init__()
        if modality not in ("image", "text", "both"):
            raise ValueError(f"modality must be 'image', 'text' or 'both', got {modality!r}")
        if modality != "text" and aggregator is None:
            raise ValueError(f"modality {modality!r} needs an aggregator")
        if modality != "image" and report_dim <= 0:
            raise ValueError(f"modality {modality!r} needs report_dim > 0")
        self.modality = modality
        self.aggregator = aggregator if modality != "text" else None
        slide_dim = self.aggregator.out_dim if self.aggregator is not None else 0
        if modality == "image":
            self.head = nn.Linear(slide_dim, n_outputs)
        else:
            in_dim = (slide_dim if modality == "both" else 0) + report_dim
            self.head = nn.Sequential(nn.Linear(in_dim, fusion_hidden), nn.ReLU(),
                                      nn.Dropout(dropout), nn.Linear(fusion_hidden, n_outputs))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Logits from the modalities selected; attention over instances when a slide is used."""
        parts, attention = [], None
        if self.aggregator is not None:
            emb, attention = self.aggregator(batch["features"], batch.get("mask"))
            parts.append(emb)
        if self.modality != "image":
            if batch.get("report") is None:
                raise ValueError(f"modality {self.modality!r} needs report embeddings in the batch")
            parts.append(batch["report"].to(parts[0].dtype if parts else torch.float32))
        return {"logits": self.head(torch.cat(parts, dim=-1)), "attention": attention}


def save_aggregator(aggregator: nn.Module, path: str | os.PathLike) -> None:
    """Write an aggregator's weights as safetensors (the format :func:`load_aggregator` reads)."""
    from safetensors.torch import save_file

    from openmusk.core.io import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in aggregator.state_dict().items()}
    with atomic_path(path, suffix=".safetensors.tmp") as tmp:
        save_file(state, str(tmp), metadata={"class": type(aggregator).__name__})


def load_aggregator(aggregator: nn.Module, path: str | os.PathLike, strict: bool = False) -> dict:
    """Initialise ``aggregator`` from a safetensors file by parameter name.

    Keys may carry an ``aggregator.`` prefix (a whole MilModel's file). Returns a report
    ``{"matched", "missing", "unexpected", "mismatched"}``; tensors with the wrong shape are left at
    their initial values. With ``strict`` any missing/unexpected/mismatched key is an error.
    """
    from openmusk.core.io import load_safetensors

    if not os.path.isfile(path):
        raise FileNotFoundError(f"aggregator weights not found: {path}")
    loaded = load_safetensors(path, "aggregator weights")
    if any(k.startswith("aggregator.") for k in loaded):
        loaded = {k[len("aggregator."):]: v for k, v in loaded.items() if k.startswith("aggregator.")}
    own = aggregator.state_dict()
    matched = [k for k in own if k in loaded and loaded[k].shape == own[k].shape]
    report = {
        "matched": matched,
        "missing": [k for k in own if k not in loaded],
        "unexpected": [k for k in loaded if k not in own],
        "mismatched": [f"{k}: file {tuple(loaded[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in own if k in loaded and loaded[k].shape != own[k].shape],
    }
    if not matched:
        raise ValueError(f"{path}: no tensor matches the {type(aggregator).__name__} aggregator "
                         f"(file keys start {sorted(loaded)[:5]})")
    if strict and (report["missing"] or report["unexpected"] or report["mismatched"]):
        raise ValueError(f"{path}: aggregator weights do not match exactly: "
                         f"missing {report['missing']}, unexpected {report['unexpected']}, "
                         f"mismatched {report['mismatched']}")
    aggregator.load_state_dict({k: loaded[k] for k in matched}, strict=False)
    return report
