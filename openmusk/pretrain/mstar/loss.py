"""Tri-modal CLIP loss of mSTAR stage 1 that uses only the pairs that exist for each patient.

For every pair of modalities (slide-report, slide-RNA, report-RNA) the symmetric InfoNCE loss is
computed over the patients that have both; a pair with fewer than two such patients in the batch
contributes nothing. Under ``torch.distributed`` embeddings and presence masks are gathered from
all ranks (with gradients through the local shard) by ``openmusk.core.dist.all_gather_with_grad``.
"""
from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

from openmusk.core.dist import all_gather_with_grad

__all__ = ["pair_clip_loss", "TriModalClipLoss"]


def pair_clip_loss(a: torch.Tensor, b: torch.Tensor, present: torch.Tensor,
                   logit_scale: torch.Tensor) -> torch.Tensor | None:
    """Symmetric CLIP loss between L2-normalised ``a`` and ``b`` on rows where ``present``; None if < 2 rows."""
    idx = torch.nonzero(present, as_tuple=False).flatten()
    if idx.numel() < 2:
        return None
    a, b = a[idx], b[idx]
    logits = logit_scale.exp() * a @ b.t()
    target = torch.arange(len(idx), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class TriModalClipLoss(torch.nn.Module):
    """Mean of the pairwise CLIP losses over the modality pairs that have at least two complete rows."""

    def forward(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                logit_scale: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``embeddings[m]`` (B, D) normalised, ``present[m]`` (B,) bool; returns (loss, per-pair values)."""
        names = sorted(embeddings)
        emb = {m: all_gather_with_grad(embeddings[m]) for m in names}
        pres = {m: all_gather_with_grad(present[m].to(embeddings[m].dtype)).bool() for m in names}
        losses, parts = [], {}
        for x, y in combinations(names, 2):
            loss = pair_clip_loss(emb[x], emb[y], pres[x] & pres[y], logit_scale)
            if loss is not None:
                losses.append(loss)
                parts[f"{x}-{y}"] = float(loss.detach())
        if not losses:
            ref = next(iter(embeddings.values()))
            return ref.sum() * 0.0, parts
        return torch.stack(losses).mean(), parts
