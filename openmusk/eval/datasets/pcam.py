"""PatchCamelyon (Veeling et al.) as published: ``camelyonpatch_level_2_split_<split>_{x,y}.h5``.

Checked against the owners' README (basveeling/pcam): ``x`` is N x 96 x 96 x 3 uint8, ``y`` is
N x 1 x 1 x 1 (1 = metastatic tissue in the centre 32 x 32 px); splits ``train``, ``valid``,
``test``; the files are released gzipped. A ``.h5.gz`` is unpacked once next to itself (atomically)
and the HDF5 is then read directly.
"""
from __future__ import annotations

import gzip
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from openmusk.eval.datasets.base import PublishedDataset

__all__ = ["read_pcam", "PCAM_SPLITS"]

PCAM_SPLITS = ("train", "valid", "test")


def _h5(root: Path, split: str, part: str) -> Path:
    """The HDF5 file of one split and part (x or y), unpacking the released ``.gz`` if needed."""
    from openmusk.core.io import atomic_path

    name = f"camelyonpatch_level_2_split_{split}_{part}.h5"
    path = root / name
    if path.is_file():
        return path
    packed = root / (name + ".gz")
    if not packed.is_file():
        raise FileNotFoundError(f"PatchCamelyon: neither {path} nor {packed} found")
    print(f"unpacking {packed} -> {path} (once)", file=sys.stderr)
    with gzip.open(packed, "rb") as src, atomic_path(path, suffix=".h5.tmp") as tmp:
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    return path


class _Patches:
    """Lazy reader of one ``x`` file (opened on first use, once per worker process)."""

    def __init__(self, path: Path):
        self.path, self._x = path, None

    def __call__(self, i: int) -> Image.Image:
        import h5py

        if self._x is None:
            self._x = h5py.File(self.path, "r")["x"]
        return Image.fromarray(np.asarray(self._x[i], dtype=np.uint8))

    def __getstate__(self) -> dict:
        return {"path": self.path, "_x": None}


def read_pcam(root: str | Path, split: str | None = None) -> PublishedDataset:
    """The patches of one split (None: train, valid, test) with labels from ``y``."""
    import h5py

    root = Path(root)
    if split is not None and split not in PCAM_SPLITS:
        raise ValueError(f"PatchCamelyon split {split!r}: one of {PCAM_SPLITS}")
    keys, sources, labels = [], [], []
    for part in ([split] if split is not None else list(PCAM_SPLITS)):
        xp, yp = _h5(root, part, "x"), _h5(root, part, "y")
        with h5py.File(xp, "r") as fx, h5py.File(yp, "r") as fy:
            if "x" not in fx or "y" not in fy:
                raise ValueError(f"PatchCamelyon {part}: {xp} needs dataset 'x' and {yp} dataset 'y'")
            n, y = fx["x"].shape[0], np.asarray(fy["y"]).reshape(-1)
        if len(y) != n:
            raise ValueError(f"PatchCamelyon {part}: {n} patches but {len(y)} labels")
        reader = _Patches(xp)
        keys += [f"{part}/{i}" for i in range(n)]
        sources += [partial(reader, i) for i in range(n)]
        labels += y.astype(np.int64).tolist()
    return PublishedDataset(keys, sources, labels, ["normal", "tumor"])
