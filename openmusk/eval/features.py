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

from openmusk.data.datasets import ImageDataset, collate_skip_bad
from openmusk.io import atomic_path

__all__ = ["FeatureSet", "extract_features", "cached_features", "encode_texts",
           "cached_text_features", "cache_path"]


@dataclass
class FeatureSet:
    """Features of the readable items of one dataset split, and the items that failed."""

    features: np.ndarray
    index: np.ndarray
    labels: np.ndarray | None
    failed: list[tuple[int, str]]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)) or "_"


def cache_path(cache_dir: str | os.PathLike, model: str, dataset: str, split: str | None,
               kind: str) -> Path:
    """Where the features of (model, dataset, split, kind) live."""
    return Path(cache_dir) / _safe(model) / _safe(dataset) / f"{_safe(split or 'all')}-{kind}.h5"


@torch.no_grad()
def extract_features(encoder, dataset: ImageDataset, kind: str = "embed", batch_size: int = 64,
                     num_workers: int = 2, progress: bool = True) -> FeatureSet:
    """Encode every image of ``dataset``; unreadable images are skipped and reported."""
    from tqdm import tqdm

    two_stage = getattr(encoder, "worker_transform", None) is not None
    dataset.transform = encoder.worker_transform if two_stage else encoder.transform
    device = getattr(encoder, "device", torch.device("cpu"))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_skip_bad, pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    feats, index, bad = [], [], []
    for images, idx, failed in tqdm(loader, desc=f"{encoder.name} {dataset.name} {kind}",
                                    unit="batch", disable=not progress, file=sys.stderr):
        bad.extend(failed.tolist())
        if images is not None:
            if two_stage:
                images = encoder.batch_transform(images)
            feats.append(encoder.encode_image(images, kind=kind).cpu().numpy().astype(np.float32))
            index.append(idx.numpy())
    failed = [(i, dataset.check_image(i) or "unreadable") for i in bad]
    for i, reason in failed:
        print(f"skipped {reason}", file=sys.stderr)
    if not feats:
        raise ValueError(f"{dataset.name}: none of its {len(dataset)} images could be read")
    index_arr = np.concatenate(index)
    labels = np.asarray(dataset.labels)[index_arr] if dataset.labels is not None else None
    return FeatureSet(np.concatenate(feats), index_arr, labels, failed)


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
        return extract_features(encoder, dataset, kind=kind, **kwargs)
    path = cache_path(cache_dir, encoder.name, dataset.name, split, kind)
    if path.is_file():
        fs, attrs = _read(path)
        if int(attrs.get("n_items", -1)) == len(dataset):
            return fs
    fs = extract_features(encoder, dataset, kind=kind, **kwargs)
    _write(path, fs, {"model": encoder.name, "dataset": dataset.name, "split": split or "all",
                      "kind": kind, "n_items": len(dataset)})
    return fs


@torch.no_grad()
def encode_texts(encoder, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Encode texts in batches; (n, D) float32."""
    if not encoder.has_text:
        raise ValueError(f"encoder {encoder.name!r} has no text tower")
    out = [encoder.encode_text(list(texts[s:s + batch_size])).cpu().numpy()
           for s in range(0, len(texts), batch_size)]
    return np.concatenate(out).astype(np.float32)


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
