"""Pathology-report embeddings from MUSK's language side, computed once and cached in HDF5.

Which embedding: the L2-normalised ``language_head`` output of the ``<s>`` token
(``model.encode_text(head=True, normalize=True)``). It is the representation MUSK's contrastive
stage trained to summarise a whole text in the image-text space; the raw CLS before the head only
ever saw masked-token prediction, which gives no sentence-level training signal.

Long reports: the paper had GPT-4 summarise reports to fit 100 tokens; that cannot run here, so a
report is cut into consecutive windows of 98 pieces (``tokenizer.encode_chunks``, each wrapped in
``<s> ... </s>``), every window is embedded, the window embeddings are averaged with weights equal
to their piece counts and the mean is L2-normalised again. Reports within 100 tokens give exactly
the plain embedding.

Cache: ``<cache>.h5``, one group per model fingerprint (name + hash of the language head weights),
one dataset per report named by the SHA-256 of its text; a changed model never reuses old vectors.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch

__all__ = ["model_fingerprint", "text_key", "embed_report", "embed_reports"]


def model_fingerprint(model: torch.nn.Module, name: str = "") -> str:
    """Cache key of a text encoder: its name plus a hash of its config and language head weights."""
    h = hashlib.sha256(repr(getattr(model, "config", "")).encode())
    h.update(model.language_head.weight.detach().float().cpu().numpy().tobytes())
    return f"{name or type(model).__name__}-{h.hexdigest()[:16]}"


def text_key(text: str) -> str:
    """Dataset name of a report in the cache: SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@torch.no_grad()
def embed_report(model: torch.nn.Module, tokenizer, text: str, max_len: int = 100,
                 batch_size: int = 16) -> np.ndarray:
    """One report -> (D,) normalised embedding; long reports by piece-weighted chunk averaging."""
    ids, pad = tokenizer.encode_chunks(text, max_len=max_len)
    device = next(model.parameters()).device
    embs = torch.cat([model.encode_text(ids[i:i + batch_size].to(device), pad[i:i + batch_size].to(device),
                                        head=True, normalize=True).float().cpu()
                      for i in range(0, len(ids), batch_size)])
    weights = ((~pad.bool()).sum(1) - 2).clamp(min=1).float()  # pieces per window, specials excluded
    mean = (embs * weights[:, None]).sum(0) / weights.sum()
    return torch.nn.functional.normalize(mean, dim=0).numpy()


def embed_reports(texts: Sequence[str], model: torch.nn.Module, tokenizer,
                  cache: str | os.PathLike | None = None, model_name: str = "",
                  progress: bool = False) -> np.ndarray:
    """(N, D) embeddings of ``texts``, read from / added to the HDF5 ``cache`` when given.

    Empty texts are an error naming their positions (an empty report carries no information and
    would silently become the embedding of ``<s></s>``).
    """
    import h5py

    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise ValueError(f"empty report text at positions {empty[:10]}")
    group = model_fingerprint(model, model_name)
    found: dict[str, np.ndarray] = {}
    if cache is not None and os.path.isfile(cache):
        with h5py.File(cache, "r") as f:
            if group in f:
                g = f[group]
                found = {k: g[k][:] for k in {text_key(t) for t in texts} if k in g}
    todo = [t for t in dict.fromkeys(texts) if text_key(t) not in found]
    if todo:
        from tqdm.auto import tqdm

        was_training = model.training
        model.eval()
        new = {text_key(t): embed_report(model, tokenizer, t)
               for t in tqdm(todo, desc="report embeddings", disable=not progress)}
        model.train(was_training)
        found.update(new)
        if cache is not None:
            _append_cache(cache, group, new)
    return np.stack([found[text_key(t)] for t in texts]).astype(np.float32)


def _append_cache(cache: str | os.PathLike, group: str, vectors: dict[str, np.ndarray]) -> None:
    """Add vectors to the cache: copy the old file to a temporary one, add, rename (atomic)."""
    import shutil

    import h5py

    from openmusk.io import atomic_path

    with atomic_path(cache, suffix=".h5.tmp") as tmp:
        if os.path.isfile(cache):
            shutil.copyfile(cache, tmp)
        with h5py.File(tmp, "a") as f:
            g = f.require_group(group)
            for k, v in vectors.items():
                if k not in g:
                    g.create_dataset(k, data=v)
