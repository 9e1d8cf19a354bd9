"""Masking for the pretraining objectives, by the rules of the authors' pretraining code (MUSK v1.0.0).

* Images: BEiT's block-wise generator (``1_mask_pretrain/datasets/masking_generator.py``): at
  MUSK's size 230 of the 24x24 patches, in rectangles of 16 to 100 patches.
* Texts: each non-special position is selected with probability ``ratio`` (Bernoulli), optionally
  extended to whole words; a selected position becomes ``<mask>`` (80%), a random id drawn from
  [0, 64001] (10%, as their ``random.randint(0, vocab_size - 1)``), or stays (10%). The masked-text
  losses of both stages score only the positions that became ``<mask>`` (:func:`mlm_labels`);
  ``targets="selected"`` scores every selected position instead (BERT's rule, the paper's text).

Draws come from a numpy ``Generator`` (a sample's own, see :mod:`openmusk.pretrain.stream`);
:func:`block_mask` also takes a ``random.Random``, with which it draws exactly the numbers the
authors' generator draws from python's ``random`` (their masks, bit for bit).
"""
from __future__ import annotations

import math
import random
from typing import Literal, Sequence

import numpy as np
import torch

__all__ = ["block_mask", "mask_text", "mlm_labels", "word_spans", "SPECIAL_IDS", "MASK_ID"]

# <s>, <pad>, </s>, <unk> and <mask>: never selected for masking.
SPECIAL_IDS = (0, 1, 2, 3, 64001)
MASK_ID = 64001
RANDOM_ID_MAX = 64001     # their random replacement: randint(0, tokenizer.vocab_size - 1), inclusive

Rng = np.random.Generator | random.Random


def _uniform(rng: Rng, a: float, b: float) -> float:
    """a + (b - a) * U[0, 1), as python's ``random.uniform`` (also when b < a)."""
    return a + (b - a) * rng.random()


def _randint(rng: Rng, a: int, b: int) -> int:
    """An integer in [a, b], both ends included."""
    return rng.randint(a, b) if isinstance(rng, random.Random) else int(rng.integers(a, b + 1))


def block_mask(grid: int, num_masking: int, rng: Rng, min_num: int = 16,
               max_num: int | None = 100, min_aspect: float = 0.3) -> np.ndarray:
    """BEiT's block-wise masking: (grid, grid) bool with at most ``num_masking`` patches in blocks.

    Until ``num_masking`` patches are masked: budget = min(remaining, ``max_num``); up to 10 tries
    of a rectangle of area U(``min_num``, budget) (the lower end stays ``min_num`` even when the
    budget is smaller, as theirs) and aspect exp(U(log a, log 1/a)) at a random place; the first
    that adds between 1 and budget new patches is kept; 10 failed tries end the mask early.
    """
    mask = np.zeros((grid, grid), dtype=bool)
    max_num = num_masking if max_num is None else max_num
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_masking:
        budget = min(num_masking - count, max_num)
        delta = 0
        for _ in range(10):
            area = _uniform(rng, min_num, budget)
            aspect = math.exp(_uniform(rng, *log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < grid and h < grid:
                top, left = _randint(rng, 0, grid - h), _randint(rng, 0, grid - w)
                region = mask[top:top + h, left:left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region[:] = True
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def word_spans(words_pieces: Sequence[int], offset: int = 0) -> list[tuple[int, int]]:
    """(start, end) positions of each word given its number of pieces; ``offset`` 0 is the authors'
    convention (spans counted from position 0, i.e. one to the left of the words after ``<s>``),
    1 puts them on the words themselves."""
    spans, pos = [], offset
    for n in words_pieces:
        spans.append((pos, pos + n))
        pos += n
    return spans


def mask_text(input_ids: torch.Tensor, ratio: float, rng: np.random.Generator,
              spans: Sequence[tuple[int, int]] | None = None, targets: Literal["mask", "selected"] = "mask",
              mask_id: int = MASK_ID, random_max: int = RANDOM_ID_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt one sequence: Bernoulli(``ratio``) per non-special position, whole-word extension
    over ``spans`` (a word whose start is selected is selected whole), then 80/10/10.

    Returns the corrupted ids and the labels (original id where scored, -100 elsewhere):
    ``targets="mask"`` scores the positions that hold ``<mask>`` afterwards (the authors' code),
    ``"selected"`` every selected position (BERT).
    """
    ids = input_ids.clone()
    special = torch.isin(ids, torch.tensor(SPECIAL_IDS)).numpy()
    selected = (rng.random(len(ids)) < ratio) & ~special
    for start, end in spans or ():
        if start < len(selected) and selected[start]:
            selected[start:end] = True
    selected &= ~special            # a span cut by truncation never reaches </s> or padding
    chosen = np.flatnonzero(selected)
    action = rng.random(len(chosen))
    to_mask = chosen[action < 0.8]
    to_rand = chosen[action >= 0.9]
    ids[torch.from_numpy(to_mask)] = mask_id
    ids[torch.from_numpy(to_rand)] = torch.from_numpy(rng.integers(0, random_max + 1, size=len(to_rand)))
    if targets == "mask":
        return ids, mlm_labels(input_ids, ids, mask_id)
    if targets != "selected":
        raise ValueError(f"targets must be 'mask' or 'selected', got {targets!r}")
    labels = torch.full_like(ids, -100)
    labels[torch.from_numpy(chosen)] = input_ids[torch.from_numpy(chosen)]
    return ids, labels


def mlm_labels(input_ids: torch.Tensor, masked_ids: torch.Tensor, mask_id: int = MASK_ID) -> torch.Tensor:
    """The authors' masked-text targets: the original id wherever the corrupted text holds
    ``<mask>`` (a random replacement that drew the mask id included), -100 elsewhere."""
    return torch.where(masked_ids == mask_id, input_ids, torch.full_like(input_ids, -100))
