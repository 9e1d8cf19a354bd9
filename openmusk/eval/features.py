"""Feature extraction through a DataLoader, cached in HDF5 keyed by model + dataset + split + kind.

Cache layout: ``<cache_dir>/<model>/<dataset>/<split>-<kind>.h5`` with datasets ``features``
(n, D) float32, ``index`` (n,) dataset indices of the readable items, ``labels`` (n,) when the
dataset is labelled, ``failed_index`` / ``failed_reason`` for unreadable images; attributes
``model``, ``dataset``, ``split``, ``kind``, ``n_items``. Files are written atomically, so a cache
file that exists is complete; a cache whose ``n_items`` no longer matches the dataset is rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from openmusk.data.datasets import ImageDataset
from openmusk.encoders.embed import FeatureSet, encode_dataset, encode_texts
from openmusk.core.io import atomic_path

__all__ = ["cached_features", "cached_text_features", "cache_path"]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)) or "_"


def cache_path(cache_dir: str | os.PathLike, model: str, dataset: str, split: str | None,
               kind: str) -> Path:
    """Where the features of (model, dataset, split, kind) live."""
    return Path(cache_dir) / _safe(model) / _safe(dataset) / f"{_safe(split or 'all')}-{kind}.h5"


def _write(path: Path, fs: FeatureSet, attrs: dict) -> None:
    import h5py

    with atomic_path(path, suffix=".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=fs.features)
            f.create_dataset("index", data=fs.index)
            if fs.labels is not None:
                f.create_dataset("labels", data=fs.labels)
            f.create_dataset("failed_index", data=np.asarray([i for i, _ in fs.failed], dtype=np.int64))
            f.create_dataset("failed_reason", data=[r for _, r in fs.failed],
                             dtype=h5py.string_dtype())
            f.attrs.update(attrs)


def _read(path: Path) -> tuple[FeatureSet, dict]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            fs = FeatureSet(f["features"][:], f["index"][:],
                            f["labels"][:] if "labels" in f else None,
                            list(zip(f["failed_index"][:].tolist(),
                                     [r.decode() if isinstance(r, bytes) else r
                                      for r in f["failed_reason"][:]])))
            return fs, dict(f.attrs)
    except (OSError, KeyError) as e:
        raise ValueError(f"{path}: not a readable feature cache ({e}); delete it to rebuild") from e


def cached_features(encoder, dataset: ImageDataset, split: str | None, kind: str,
                    cache_dir: str | os.PathLike | None, **kwargs) -> FeatureSet:
    """:func:`extract_features`, reusing ``cache_dir``'s file for the same model/dataset/split/kind."""
    if cache_dir is None:
        return encode_dataset(encoder, dataset, kind=kind, **kwargs)
    path = cache_path(cache_dir, encoder.name, dataset.name, split, kind)
    if path.is_file():
        fs, attrs = _read(path)
        if int(attrs.get("n_items", -1)) == len(dataset):
            return fs
    fs = encode_dataset(encoder, dataset, kind=kind, **kwargs)
    _write(path, fs, {"model": encoder.name, "dataset": dataset.name, "split": split or "all",
                      "kind": kind, "n_items": len(dataset)})
    return fs


def cached_text_features(encoder, texts: Sequence[str], dataset: str, split: str | None,
                         cache_dir: str | os.PathLike | None, batch_size: int = 256) -> np.ndarray:
    """:func:`encode_texts`, cached like image features and keyed also by a hash of the texts."""
    if cache_dir is None:
        return encode_texts(encoder, texts, batch_size)
    digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
    path = cache_path(cache_dir, encoder.name, dataset, split, "text")
    if path.is_file():
        fs, attrs = _read(path)
        if attrs.get("sha1") == digest:
            return fs.features
    feats = encode_texts(encoder, texts, batch_size)
    _write(path, FeatureSet(feats, np.arange(len(texts)), None, []),
           {"model": encoder.name, "dataset": dataset, "split": split or "all", "kind": "text",
            "n_items": len(texts), "sha1": digest})
    return feats
