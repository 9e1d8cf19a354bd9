"""Features of benchmark datasets, cached in HDF5 keyed by model + dataset + split + kind.

Cache layout: ``<cache_dir>/<model>/<dataset>/<split>-<kind>.h5`` with datasets ``features``
(n, D) float32, ``index`` (n,) dataset indices of the readable items, ``labels`` (n,) when the
dataset is labelled, ``failed_index`` / ``failed_reason`` for unreadable images; attributes
``model``, ``dataset``, ``split``, ``kind``, ``n_items`` and the encoder's description
(:func:`openmusk.encoders.encoder_info`). Files are written atomically through
:func:`openmusk.data.features_h5.write_arrays`, so a cache file that exists is complete; a cache
whose ``n_items`` no longer matches the dataset, or that another encoder made, is rebuilt.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from openmusk.core.io import safe_filename
from openmusk.data.datasets import ImageDataset
from openmusk.data.features_h5 import FeaturesFileError, read_arrays, read_attrs, write_arrays
from openmusk.encoders import FeatureSet, encode_dataset, encode_texts, encoder_info

__all__ = ["cached_features", "cached_text_features", "cache_path"]


def cache_path(cache_dir: str | os.PathLike, model: str, dataset: str, split: str | None,
               kind: str) -> Path:
    """Where the features of (model, dataset, split, kind) live."""
    return Path(cache_dir) / safe_filename(model) / safe_filename(dataset) / f"{safe_filename(split or 'all')}-{kind}.h5"


def _write(path: Path, fs: FeatureSet, attrs: dict[str, Any]) -> None:
    arrays = {"features": fs.features, "index": fs.index,
              "failed_index": np.asarray([i for i, _ in fs.failed], dtype=np.int64),
              "failed_reason": [r for _, r in fs.failed]}
    if fs.labels is not None:
        arrays["labels"] = fs.labels
    write_arrays(path, arrays, attrs)


def _attrs(path: Path) -> dict[str, Any]:
    try:
        return read_attrs(path)
    except FeaturesFileError as e:
        raise ValueError(f"{e}; delete {path} to rebuild the cache") from e


def _read(path: Path) -> FeatureSet:
    try:
        a = read_arrays(path)
        return FeatureSet(a["features"], a["index"], a.get("labels"),
                          list(zip(a["failed_index"].tolist(), a["failed_reason"])))
    except (FeaturesFileError, KeyError) as e:
        raise ValueError(f"{path}: not a readable feature cache ({e}); delete it to rebuild") from e


def _same_encoder(attrs: dict[str, Any], info: dict[str, Any]) -> bool:
    """Whether a cache was made by this encoder (caches written before this was recorded count)."""
    return attrs.get("encoder_spec", info["encoder_spec"]) == info["encoder_spec"]


def cached_features(encoder, dataset: ImageDataset, split: str | None, kind: str,
                    cache_dir: str | os.PathLike | None, **kwargs) -> FeatureSet:
    """:func:`openmusk.encoders.encode_dataset`, reusing ``cache_dir``'s file for the same
    model/dataset/split/kind."""
    if cache_dir is None:
        return encode_dataset(encoder, dataset, kind=kind, **kwargs)
    path = cache_path(cache_dir, encoder.name, dataset.name, split, kind)
    info = encoder_info(encoder, kind)
    if path.is_file():
        attrs = _attrs(path)
        if int(attrs.get("n_items", -1)) == len(dataset) and _same_encoder(attrs, info):
            return _read(path)
    fs = encode_dataset(encoder, dataset, kind=kind, **kwargs)
    _write(path, fs, {**info, "model": encoder.name, "dataset": dataset.name, "split": split or "all",
                      "kind": kind, "n_items": len(dataset)})
    return fs


def cached_text_features(encoder, texts: Sequence[str], dataset: str, split: str | None,
                         cache_dir: str | os.PathLike | None, batch_size: int = 256) -> np.ndarray:
    """:func:`openmusk.encoders.encode_texts`, cached like image features and keyed also by a
    hash of the texts."""
    if cache_dir is None:
        return encode_texts(encoder, texts, batch_size)
    digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()
    path = cache_path(cache_dir, encoder.name, dataset, split, "text")
    info = encoder_info(encoder, "embed")
    if path.is_file():
        attrs = _attrs(path)
        if attrs.get("sha1") == digest and _same_encoder(attrs, info):
            return _read(path).features
    feats = encode_texts(encoder, texts, batch_size)
    _write(path, FeatureSet(feats, np.arange(len(texts)), None, []),
           {**info, "model": encoder.name, "dataset": dataset, "split": split or "all", "kind": "text",
            "n_items": len(texts), "sha1": digest})
    return feats
