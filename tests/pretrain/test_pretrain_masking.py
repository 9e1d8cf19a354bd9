"""Block-wise image masks (BEiT) and 80/10/10 text masks (BERT)."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from openmusk.pretrain.masking import SPECIAL_IDS, block_mask, mask_text


def test_block_mask_hits_target_in_blocks():
    rng = np.random.default_rng(0)
    counts, components = [], []
    for _ in range(200):
        m = block_mask(24, 230, rng, min_num=16)       # MUSK: 24x24 grid, 40% masked
        counts.append(int(m.sum()))
        components.append(ndimage.label(m)[1])
    counts = np.array(counts)
    assert counts.max() <= 230 and counts.mean() > 0.9 * 230
    # blocks, not scattered patches: far fewer connected regions than masked patches
    assert np.mean(components) < 15


def test_block_mask_is_reproducible_from_the_generator():
    a = block_mask(8, 25, np.random.default_rng(5), min_num=4)
    b = block_mask(8, 25, np.random.default_rng(5), min_num=4)
    assert np.array_equal(a, b) and a.sum() > 0


def test_text_mask_targets_15_percent_of_non_special_with_80_10_10():
    rng = np.random.default_rng(1)
    ids = torch.tensor([0] + list(range(100, 180)) + [2] + [1] * 18)  # 80 real pieces
    n_targets, n_mask, n_rand, n_keep = 0, 0, 0, 0
    for _ in range(300):
        out, labels = mask_text(ids, 0.15, rng)
        sel = labels != -100
        assert int(sel.sum()) == 12                          # round(0.15 * 80)
        assert not torch.isin(ids[sel], torch.tensor(SPECIAL_IDS)).any()
        assert torch.equal(labels[sel], ids[sel]) and torch.equal(out[~sel], ids[~sel])
        n_targets += int(sel.sum())
        n_mask += int((out[sel] == 64001).sum())
        changed = (out[sel] != ids[sel]) & (out[sel] != 64001)
        n_rand += int(changed.sum())
        n_keep += int((out[sel] == ids[sel]).sum())
    assert abs(n_mask / n_targets - 0.8) < 0.03
    assert abs((n_rand + n_keep) / n_targets - 0.2) < 0.03
    assert n_rand > 0.07 * n_targets and n_keep > 0.07 * n_targets


def test_text_mask_of_a_text_without_pieces_has_no_targets():
    ids = torch.tensor([0, 2, 1, 1])
    out, labels = mask_text(ids, 0.15, np.random.default_rng(0))
    assert torch.equal(out, ids) and bool((labels == -100).all())
