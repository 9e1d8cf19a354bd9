"""BagDataset's in-memory bag cache: the same arrays as reading the files, and a changed file is read again."""
from __future__ import annotations

import os

import numpy as np
import torch

from openmusk.data.features_h5 import write_features
from openmusk.mil.cohort import BagDataset, PatientRecord, read_bag


def test_cached_bags_equal_the_files_and_a_changed_file_is_read_again(tmp_path):
    rng = np.random.default_rng(0)
    paths = [str(tmp_path / f"s{k}.h5") for k in range(3)]
    for p in paths:
        write_features(p, rng.normal(size=(5, 4)), rng.integers(0, 500, (5, 2)))
    recs = [PatientRecord("p0", ["s0", "s1"], feature_files=paths[:2]),
            PatientRecord("p1", ["s2"], feature_files=paths[2:])]
    cached, uncached = BagDataset(recs), BagDataset(recs, cache_bytes=0)
    for _ in range(2):   # the second pass comes from memory
        for i in range(2):
            a, b = cached[i], uncached[i]
            for key in ("features", "coords", "slide_index"):
                assert torch.equal(a[key], b[key])
    assert np.array_equal(cached[0]["features"].numpy(), read_bag(paths[:2])[0])
    new = rng.normal(size=(7, 4))
    write_features(paths[2], new, rng.integers(0, 500, (7, 2)))
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a rewrite within the clock's tick
    assert np.allclose(BagDataset(recs)[1]["features"].numpy(), new)
