"""Masking for the pretraining objectives: BEiT's block-wise image masks and BERT's 80/10/10 text masks."""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["block_mask", "mask_text", "SPECIAL_IDS"]

# <s>, <pad>, </s>, <unk> and <mask>: never chosen as MLM targets.
SPECIAL_IDS = (0, 1, 2, 3, 64001)
_FIRST_PIECE, _MASK_ID = 4, 64001


def block_mask(grid: int, num_masking: int, rng: np.random.Generator, min_num: int = 16,
               max_num: int | None = None, min_aspect: float = 0.3) -> np.ndarray:
    """BEiT's block-wise masking: (grid, grid) bool with about ``num_masking`` patches in blocks.

    Rectangles of random area in [min_num, remaining] and aspect ratio in [min_aspect, 1/min_aspect]
    are added until the target is met or no placement adds patches (as in BEiT's generator).
    """
    mask = np.zeros((grid, grid), dtype=bool)
    max_num = num_masking if max_num is None else max_num
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_masking:
        budget = min(num_masking - count, max_num)
        delta = 0
        for _ in range(10):
            area = rng.uniform(min(min_num, budget), budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < grid and 0 < w < grid:
                top, left = int(rng.integers(0, grid - h + 1)), int(rng.integers(0, grid - w + 1))
                region = mask[top:top + h, left:left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region[:] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


def mask_text(input_ids: torch.Tensor, ratio: float, rng: np.random.Generator,
              vocab_size: int = 64001, mask_id: int = _MASK_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of one sequence: ``ratio`` of non-special tokens become targets (at least one).

    Of the targets 80% are replaced by ``<mask>``, 10% by a random piece, 10% kept. Returns the
    corrupted ids and the labels (-100 where not a target).
    """
    ids = input_ids.clone()
    labels = torch.full_like(ids, -100)
    special = torch.tensor(SPECIAL_IDS)
    candidates = torch.nonzero(~torch.isin(ids, special)).flatten().numpy()
    if len(candidates) == 0:
        return ids, labels
    k = max(1, int(round(ratio * len(candidates))))
    chosen = torch.from_numpy(rng.choice(candidates, size=k, replace=False))
    labels[chosen] = ids[chosen]
    action = rng.random(k)
    to_mask = chosen[torch.from_numpy(action < 0.8)]
    to_rand = chosen[torch.from_numpy((action >= 0.8) & (action < 0.9))]
    ids[to_mask] = mask_id
    ids[to_rand] = torch.from_numpy(rng.integers(_FIRST_PIECE, vocab_size, size=len(to_rand)))
    return ids, labels
