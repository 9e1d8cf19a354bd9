"""Report text: the one long-text embedding every stage uses (``embed texts``, mil, mSTAR), and its cache.

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

Modes (:data:`REPORT_MODES`, :func:`embed_report_mode`), what a slide-level model sees of a report:
``raw-windows`` the full report by windows as above (``max_windows`` keeps only the first windows,
e.g. 1 = MUSK's plain 100-token truncation); ``summary`` the embedding of a short summary of the
report (:mod:`openmusk.text.summarize`); ``summary+windows`` both, concatenated (2 x D).
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch

__all__ = ["report_embeddings", "embed_report", "embed_reports", "embed_report_mode", "model_fingerprint",
           "text_key", "REPORT_MODES"]

REPORT_MODES = ("raw-windows", "summary", "summary+windows")


def model_fingerprint(model: torch.nn.Module, name: str = "") -> str:
    """Cache key of a text encoder: its name plus a hash of its config and language head weights."""
    h = hashlib.sha256(repr(getattr(model, "config", "")).encode())
    h.update(model.language_head.weight.detach().float().cpu().numpy().tobytes())
    return f"{name or type(model).__name__}-{h.hexdigest()[:16]}"


def text_key(text: str) -> str:
    """Dataset name of a report in the cache: SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def report_embeddings(model: torch.nn.Module, tokenizer, texts: Sequence[str], max_len: int = 100,
                      batch_size: int = 64, head: bool = True, normalize: bool = True,
                      max_windows: int | None = None) -> torch.Tensor:
    """(B, D) embeddings of ``texts`` on the model's device, with gradients when enabled.

    Each text is cut into windows of ``max_len - 2`` pieces; all windows of all texts go through
    ``model.encode_text`` in batches of ``batch_size``; each text's windows are averaged with weights
    equal to their piece counts and the mean is L2-normalised (``normalize``). A text within
    ``max_len`` tokens gives exactly its plain embedding. An empty text is an error naming it.
    ``max_windows`` keeps only each text's first windows (1 = plain truncation to ``max_len``).
    """
    ids, pads, owner, weights = [], [], [], []
    for i, text in enumerate(texts):
        if not str(text).strip():
            raise ValueError(f"text {i} is empty (an empty report carries no information; mark it missing)")
        a, b = tokenizer.encode_chunks(str(text), max_len=max_len)
        if max_windows:
            a, b = a[:max_windows], b[:max_windows]
        ids.append(a)
        pads.append(b)
        owner += [i] * len(a)
        weights.append(((~b.bool()).sum(1) - 2).clamp(min=1))  # pieces per window, specials excluded
    device = next(model.parameters()).device
    if not ids:
        return torch.zeros(0, model.config.embed_dim, device=device)
    ids_t, pad_t = torch.cat(ids), torch.cat(pads)
    emb = torch.cat([model.encode_text(ids_t[s:s + batch_size].to(device), pad_t[s:s + batch_size].to(device),
                                       head=head, normalize=normalize).float()
                     for s in range(0, len(ids_t), batch_size)])
    owner_t = torch.tensor(owner, device=device)
    w = torch.cat(weights).to(device=device, dtype=emb.dtype)
    total = torch.zeros(len(texts), emb.shape[1], device=device, dtype=emb.dtype).index_add(0, owner_t, emb * w[:, None])
    mean = total / torch.zeros(len(texts), device=device, dtype=emb.dtype).index_add(0, owner_t, w)[:, None]
    return torch.nn.functional.normalize(mean, dim=-1) if normalize else mean


@torch.no_grad()
def embed_report(model: torch.nn.Module, tokenizer, text: str, max_len: int = 100,
                 batch_size: int = 16) -> np.ndarray:
    """One report -> (D,) normalised embedding (see :func:`report_embeddings`)."""
    return report_embeddings(model, tokenizer, [text], max_len, batch_size)[0].cpu().numpy()


def embed_reports(texts: Sequence[str], model: torch.nn.Module, tokenizer,
                  cache: str | os.PathLike | None = None, model_name: str = "",
                  progress: bool = False, max_len: int = 100, batch_size: int = 16,
                  max_windows: int | None = None) -> np.ndarray:
    """(N, D) embeddings of ``texts``, read from / added to the HDF5 ``cache`` when given
    (``max_windows``: see :func:`report_embeddings`; truncated vectors are cached apart).

    Empty texts are an error naming their positions (an empty report carries no information and
    would silently become the embedding of ``<s></s>``).
    """
    import h5py

    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise ValueError(f"empty report text at positions {empty[:10]}")
    group = model_fingerprint(model, model_name) + (f"-w{max_windows}" if max_windows else "")
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
        new = {}
        for s in tqdm(range(0, len(todo), batch_size), desc="report embeddings", unit="batch",
                      disable=not progress):
            chunk = todo[s:s + batch_size]
            with torch.no_grad():
                vecs = report_embeddings(model, tokenizer, chunk, max_len=max_len,
                                         max_windows=max_windows).cpu().numpy()
            new.update({text_key(t): v for t, v in zip(chunk, vecs)})
        model.train(was_training)
        found.update(new)
        if cache is not None:
            _append_cache(cache, group, new)
    return np.stack([found[text_key(t)] for t in texts]).astype(np.float32)


def embed_report_mode(mode: str, reports: Sequence[str], summaries: Sequence[str] | None,
                      model: torch.nn.Module, tokenizer, cache: str | os.PathLike | None = None,
                      model_name: str = "", max_windows: int | None = None,
                      progress: bool = False) -> np.ndarray:
    """(N, D) or (N, 2D) report vectors in one of :data:`REPORT_MODES` (see the module docstring)."""
    if mode not in REPORT_MODES:
        raise ValueError(f"report mode {mode!r}: use one of {REPORT_MODES}")
    parts = []
    if mode != "raw-windows":
        if summaries is None or len(summaries) != len(reports):
            raise ValueError(f"report mode {mode!r} needs one summary per report")
        parts.append(embed_reports(summaries, model, tokenizer, cache, model_name, progress))
    if mode != "summary":
        parts.append(embed_reports(reports, model, tokenizer, cache, model_name, progress,
                                   max_windows=max_windows))
    return np.concatenate(parts, axis=1)


def _append_cache(cache: str | os.PathLike, group: str, vectors: dict[str, np.ndarray]) -> None:
    """Add vectors to the cache: copy the old file to a temporary one, add, rename (atomic)."""
    import shutil

    import h5py

    from openmusk.core.io import atomic_path

    with atomic_path(cache, suffix=".h5.tmp") as tmp:
        if os.path.isfile(cache):
            shutil.copyfile(cache, tmp)
        with h5py.File(tmp, "a") as f:
            g = f.require_group(group)
            for k, v in vectors.items():
                if k not in g:
                    g.create_dataset(k, data=v)
