"""MOTCat and CMTA: genomic survival models beside MCAT/PORPOISE (:mod:`openmusk.mil.genomic`).

Both take a patch bag (B, N, D) with a padding mask and a genomic vector (B, G) split into pathway
groups, and return discrete-time hazard logits (B, n_bins) for the NLL survival loss.
* MOTCat (Xu & Chen, ICCV 2023): genomic group tokens co-attend over the patches through an
  unbalanced entropic optimal-transport plan (POT's ``sinkhorn_knopp_unbalanced``, uniform marginals,
  squared-distance cost scaled by its maximum, reg 0.1, marginal relaxation 0.5); the plan is
  computed per micro-batch of patches (random partition while training), which keeps the global
  structure of the bag consistent across sub-bags; transformers, gated attention and concatenation
  then follow MCAT. Logits of the micro-batches are averaged.
* CMTA (Zhou & Chen, ICCV 2023): a TransMIL-style pathology encoder and a transformer genomic
  encoder; cross-modal attention translates each modality's tokens into the other; decoders turn the
  translations into CLS tokens that are aligned (L1, weight ``alpha``) with the encoders' CLS tokens;
  the averaged encoder/decoder CLS tokens are fused and classified. The alignment loss is returned
  as ``aux_loss`` and added to the survival loss by :func:`openmusk.mil.trainer.fit`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from openmusk.mil.genomic import GatedAttentionPool, _BatchForward
from openmusk.mil.models import _PPEG, _TransLayer

__all__ = ["uot_plan", "MOTCat", "CMTA"]


def uot_plan(source: torch.Tensor, target: torch.Tensor, reg: float = 0.1, reg_m: float = 0.5) -> torch.Tensor:
    """Unbalanced OT plan (N, M) between token sets (N, D) and (M, D), uniform marginals (MOTCat).

    Features are shifted to a zero minimum per token, the cost is the squared Euclidean distance
    divided by its maximum; the plan carries no gradient (as in MOTCat), the tokens it mixes do.
    """
    import ot

    def shift(x: torch.Tensor) -> torch.Tensor:
        return x - x.min(-1, keepdim=True).values

    with torch.no_grad():
        cost = torch.cdist(shift(source.float()), shift(target.float())) ** 2
        cost = (cost / cost.max().clamp(min=1e-12)).double()
        a = torch.full((len(source),), 1.0 / len(source), dtype=torch.float64, device=cost.device)
        b = torch.full((len(target),), 1.0 / len(target), dtype=torch.float64, device=cost.device)
        plan = ot.unbalanced.sinkhorn_knopp_unbalanced(a, b, cost, reg=reg, reg_m=reg_m)
    return plan.to(source.dtype)


def _transformer(dim: int, heads: int, depth: int, dropout: float) -> nn.TransformerEncoder:
    """MCAT's post-co-attention transformer (ReLU, FFN 2 x dim)."""
    layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class MOTCat(_BatchForward):
    """Optimal-transport co-attention transformer with micro-batch global structure consistency."""

    def __init__(self, in_dim: int, groups: Mapping[str, Sequence[int]], n_bins: int = 4, dim: int = 256,
                 heads: int = 4, depth: int = 2, dropout: float = 0.25, ot_reg: float = 0.1,
                 ot_tau: float = 0.5, micro_batch: int = 16384):
        super().__init__()
        self._embedders(in_dim, groups, dim, dropout)
        self.ot_reg, self.ot_tau, self.micro_batch = ot_reg, ot_tau, micro_batch
        self.path_tfm, self.omic_tfm = (_transformer(dim, heads, depth, dropout) for _ in range(2))
        self.path_pool = GatedAttentionPool(dim, dim, dropout)
        self.omic_pool = GatedAttentionPool(dim, dim, dropout)
        self.path_rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.omic_rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.fusion = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.classifier = nn.Linear(dim, n_bins)

    def _chunks(self, n: int, device: torch.device) -> list[torch.Tensor]:
        """Patch indices of each micro-batch: a random partition while training, in order otherwise."""
        order = torch.randperm(n, device=device) if self.training else torch.arange(n, device=device)
        return list(order.split(self.micro_batch))

    def hazard_logits(self, features: torch.Tensor, omics: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch bag (B, N, D) + genomics (B, G) -> hazard logits (B, n_bins)."""
        x, mask, h_path, h_omic = self._embed(features, omics, mask)
        co, owner, omic_rep = [], [], []
        for i in range(x.shape[0]):
            bag = h_path[i, mask[i]]
            if len(bag) == 0:
                raise ValueError(f"bag {i} of the batch has no instances")
            for idx in self._chunks(len(bag), bag.device):
                part = bag[idx]
                co.append(uot_plan(h_omic[i], part, self.ot_reg, self.ot_tau) @ part)
                owner.append(i)
                omic_rep.append(h_omic[i])
        p, _ = self.path_pool(self.path_tfm(torch.stack(co)))
        g, _ = self.omic_pool(self.omic_tfm(torch.stack(omic_rep)))
        logits = self.classifier(self.fusion(torch.cat([self.path_rho(p), self.omic_rho(g)], dim=-1)))
        owner_t = torch.tensor(owner, device=logits.device)
        summed = torch.zeros(x.shape[0], logits.shape[1], device=logits.device, dtype=logits.dtype)
        summed = summed.index_add(0, owner_t, logits)
        return summed / torch.bincount(owner_t, minlength=x.shape[0]).unsqueeze(1).to(logits.dtype)


class _TokenEncoder(nn.Module):
    """CMTA's encoder/decoder: CLS token + two Nystrom layers (PPEG between them for patches) + norm."""

    def __init__(self, dim: int, heads: int, dropout: float, positional: bool):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.layer1 = _TransLayer(dim, heads, max(1, dim // 2), dropout)
        self.layer2 = _TransLayer(dim, heads, max(1, dim // 2), dropout)
        self.pos = _PPEG(dim) if positional else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, n, dim) -> CLS (B, dim) and the n token outputs (B, n, dim)."""
        n = h.shape[1]
        side = 0
        if self.pos is not None:  # fill the square grid by repeating the first tokens, as TransMIL does
            side = math.ceil(math.sqrt(n))
            extra = side * side - n
            if extra:
                h = torch.cat([h, h[:, :extra].repeat(1, math.ceil(extra / n), 1)[:, :extra]], dim=1)
        h = torch.cat([self.cls_token.to(h.dtype).expand(h.shape[0], -1, -1), h], dim=1)
        h, _ = self.layer1(h)
        if self.pos is not None:
            h = self.pos(h, side)
        h, _ = self.layer2(h)
        h = self.norm(h)
        return h[:, 0], h[:, 1:n + 1]


class CMTA(_BatchForward):
    """Cross-modal translation and alignment: encoders, cross-attention translation, decoders, L1 alignment."""

    def __init__(self, in_dim: int, groups: Mapping[str, Sequence[int]], n_bins: int = 4, dim: int = 256,
                 heads: int = 8, dropout: float = 0.25, alpha: float = 0.5):
        super().__init__()
        self._embedders(in_dim, groups, dim, dropout)
        self.alpha = alpha
        self.path_encoder = _TokenEncoder(dim, heads, 0.1, positional=True)
        self.path_decoder = _TokenEncoder(dim, heads, 0.1, positional=True)
        self.omic_encoder = _TokenEncoder(dim, heads, 0.1, positional=False)
        self.omic_decoder = _TokenEncoder(dim, heads, 0.1, positional=False)
        self.path_in_omic = nn.MultiheadAttention(dim, 1, batch_first=True)
        self.omic_in_path = nn.MultiheadAttention(dim, 1, batch_first=True)
        self.fusion = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.classifier = nn.Linear(dim, n_bins)

    def _one(self, bag: torch.Tensor, omic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bags of equal size: patch tokens (B, N, dim), group tokens (B, G, dim) -> fused (B, dim), alignment loss."""
        cls_p, tok_p = self.path_encoder(bag)
        cls_g, tok_g = self.omic_encoder(omic)
        p_in_g, _ = self.path_in_omic(tok_p, tok_g, tok_g, need_weights=False)
        g_in_p, _ = self.omic_in_path(tok_g, tok_p, tok_p, need_weights=False)
        cls_p_hat, _ = self.path_decoder(p_in_g)
        cls_g_hat, _ = self.omic_decoder(g_in_p)
        align = F.l1_loss(cls_p_hat, cls_p.detach()) + F.l1_loss(cls_g_hat, cls_g.detach())
        return self.fusion(torch.cat([(cls_p + cls_p_hat) / 2, (cls_g + cls_g_hat) / 2], dim=-1)), align

    def encode(self, features: torch.Tensor, omics: torch.Tensor,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hazard logits (B, n_bins) and the mean alignment loss of the batch."""
        x, mask, h_path, h_omic = self._embed(features, omics, mask)
        if bool(mask.all()):  # no padding: the whole batch at once
            fused, align = self._one(h_path, h_omic)
            return self.classifier(fused), align
        fused, aligns = [], []
        for i in range(x.shape[0]):
            bag = h_path[i:i + 1, mask[i]]
            if bag.shape[1] == 0:
                raise ValueError(f"bag {i} of the batch has no instances")
            f, a = self._one(bag, h_omic[i:i + 1])
            fused.append(f)
            aligns.append(a)
        return self.classifier(torch.cat(fused)), torch.stack(aligns).mean()

    def hazard_logits(self, features: torch.Tensor, omics: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch bag (B, N, D) + genomics (B, G) -> hazard logits (B, n_bins)."""
        return self.encode(features, omics, mask)[0]

    def forward(self, batch: dict) -> dict[str, torch.Tensor | None]:
        """The trainer's convention plus ``aux_loss`` = alpha x (L1 alignment of both modalities)."""
        if batch.get("omics") is None:
            raise ValueError("CMTA needs genomic data ('omics') in the batch")
        logits, align = self.encode(batch["features"], batch["omics"], batch.get("mask"))
        return {"logits": logits, "attention": None, "aux_loss": self.alpha * align}
