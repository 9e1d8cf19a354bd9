"""Block-wise image masks (BEiT) and the authors' text masks (Bernoulli 0.15, 80/10/10, whole words)."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from openmusk.pretrain.masking import SPECIAL_IDS, block_mask, mask_text, word_spans


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


def test_text_mask_is_bernoulli_15_percent_with_80_10_10_and_scores_only_mask_positions():
    rng = np.random.default_rng(1)
    ids = torch.tensor([0] + list(range(100, 180)) + [2] + [1] * 18)  # 80 real pieces
    n_sel, counts, n_mask, n_rand, n_scored_mask = 0, [], 0, 0, 0
    for _ in range(400):
        out, labels = mask_text(ids, 0.15, rng, targets="selected")
        sel = labels != -100
        assert not torch.isin(ids[sel], torch.tensor(SPECIAL_IDS)).any()
        assert torch.equal(labels[sel], ids[sel]) and torch.equal(out[~sel], ids[~sel])
        counts.append(int(sel.sum()))
        n_sel += int(sel.sum())
        n_mask += int((out[sel] == 64001).sum())
        n_rand += int(((out[sel] != ids[sel]) & (out[sel] != 64001)).sum())
        # the authors' targets: exactly the positions holding <mask>
        _, theirs = mask_text(ids, 0.15, np.random.default_rng(len(counts)))
        n_scored_mask += int((theirs != -100).sum())
    counts = np.array(counts)
    # Bernoulli(0.15) over 80 positions: mean 12, variance 80 * .15 * .85 = 10.2 (not a fixed 12)
    assert abs(counts.mean() - 12) < 0.5 and 7 < counts.var() < 14
    assert abs(n_mask / n_sel - 0.8) < 0.03 and abs(n_rand / n_sel - 0.1) < 0.03
    assert abs(n_scored_mask / 400 - 0.8 * 12) < 0.6


def test_text_mask_labels_only_mask_positions_and_random_ids_span_all_ids():
    ids = torch.tensor([0] + list(range(100, 140)) + [2])
    rng = np.random.default_rng(3)
    drawn = []
    for _ in range(300):
        out, labels = mask_text(ids, 0.5, rng)
        assert torch.equal(labels != -100, out == 64001)
        assert torch.equal(labels[out == 64001], ids[out == 64001])
        changed = (out != ids) & (out != 64001)
        drawn += out[changed].tolist()
    drawn = np.array(drawn)
    # random replacements are drawn from [0, 64001] as randint(0, vocab_size - 1): specials included
    assert drawn.min() >= 0 and drawn.max() <= 64001 and drawn.min() < 2000


def test_whole_word_extension_selects_the_rest_of_the_span():
    ids = torch.tensor([0, 10, 11, 12, 20, 21, 30, 2])
    spans = word_spans([3, 2, 1], offset=1)                # words at 1..3, 4..5, 6
    assert spans == [(1, 4), (4, 6), (6, 7)]
    assert word_spans([3, 2, 1]) == [(0, 3), (3, 5), (5, 6)]   # the authors': counted from 0
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, labels = mask_text(ids, 0.3, rng, spans, targets="selected")
        sel = (labels != -100).numpy()
        if sel[1]:
            assert sel[1:4].all()
        if sel[4]:
            assert sel[4:6].all()
        assert not sel[0] and not sel[7]


def test_block_mask_caps_blocks_at_100_patches():
    rng = np.random.default_rng(2)
    for _ in range(50):
        m = block_mask(24, 230, rng, min_num=16, max_num=100)
        assert m.sum() <= 230
        sizes = np.bincount(ndimage.label(m)[0].ravel())[1:]
        # touching rectangles can merge, but no single rectangle exceeds 100 patches: a component
        # over 100 patches must be made of several (it is never a filled rectangle)
        for lab, size in enumerate(sizes, start=1):
            if size > 100:
                rows, cols = np.nonzero(ndimage.label(m)[0] == lab)
                assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) > size


def test_text_mask_of_a_text_without_pieces_has_no_targets():
    ids = torch.tensor([0, 2, 1, 1])
    out, labels = mask_text(ids, 0.15, np.random.default_rng(0))
    assert torch.equal(out, ids) and bool((labels == -100).all())
