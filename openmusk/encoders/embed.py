"""Encoding many images or texts with any encoder: datasets through a DataLoader (unreadable
images skipped and reported), text batches, and zero-shot class embeddings from prompt ensembles."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["FeatureSet", "encode_dataset", "encode_texts", "zero_shot_weights"]


@dataclass
class FeatureSet:
    """Features of the readable items of one dataset, and the items that failed."""

    features: np.ndarray
    index: np.ndarray
    labels: np.ndarray | None
    failed: list[tuple[int, str]]


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


@torch.no_grad()
def encode_dataset(encoder: Any, dataset: Any, kind: str = "embed", batch_size: int = 64,
                   num_workers: int = 2, progress: bool = True, normalize: bool = True) -> FeatureSet:
    """Encode every image of an :class:`~openmusk.data.datasets.ImageDataset`; unreadable images
    are skipped and listed in ``failed``. Uses the encoder's worker/batch transform split when it has one."""
    from tqdm.auto import tqdm

    from openmusk.data.datasets import collate_skip_bad

    two_stage = getattr(encoder, "worker_transform", None) is not None
    dataset.transform = encoder.worker_transform if two_stage else encoder.transform
    device = torch.device(getattr(encoder, "device", "cpu"))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_skip_bad, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    feats, index, bad = [], [], []
    for images, idx, failed in tqdm(loader, desc=f"{encoder.name} {getattr(dataset, 'name', '')} {kind}",
                                    unit="batch", disable=not progress, file=sys.stderr):
        bad.extend(failed.tolist())
        if images is not None:
            if two_stage:
                images = encoder.batch_transform(images)
            out = encoder.encode_image(images, kind=kind, normalize=normalize)
            feats.append(out.float().cpu().numpy())
            index.append(idx.numpy())
    failed = [(i, dataset.check_image(i) or "unreadable") for i in bad]
    for _, reason in failed:
        print(f"skipped {reason}", file=sys.stderr)
    if not feats:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: none of its {len(dataset)} images could be read")
    index_arr = np.concatenate(index)
    labels = np.asarray(dataset.labels)[index_arr] if getattr(dataset, "labels", None) is not None else None
    return FeatureSet(np.concatenate(feats), index_arr, labels, failed)


@torch.no_grad()
def encode_texts(encoder: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(n, D) float32 text embeddings in batches; an image-only encoder is an error naming it."""
    if not encoder.has_text:
        raise ValueError(f"encoder {encoder.name!r} has no text tower")
    out = [encoder.encode_text(list(texts[s:s + batch_size])).float().cpu().numpy()
           for s in range(0, len(texts), batch_size)]
    return np.concatenate(out).astype(np.float32)


def zero_shot_weights(encoder: Any, classes: Sequence[str], templates: Sequence[str] | Sequence[Sequence[str]],
                      batch_size: int = 256) -> np.ndarray:
    """(C, D) class embeddings from prompt ensembles: the mean of the normalised prompt embeddings
    over templates (``{c}`` filled with the class name), renormalised.

    ``classes[i]`` may itself be a list of synonyms; every synonym x template prompt counts equally.
    """
    if not classes:
        raise ValueError("zero-shot classification needs class names")
    if any("{c}" not in t for t in templates):
        raise ValueError(f"every prompt template needs a '{{c}}' placeholder: {list(templates)}")
    groups = [[c] if isinstance(c, str) else list(c) for c in classes]
    prompts = [t.replace("{c}", s) for g in groups for s in g for t in templates]
    emb = _l2(encode_texts(encoder, prompts, batch_size))
    out, start = [], 0
    for g in groups:
        n = len(g) * len(templates)
        out.append(emb[start:start + n].mean(0))
        start += n
    return _l2(np.stack(out)).astype(np.float32)
