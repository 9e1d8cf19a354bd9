"""Encoders on the user's files: image files and folders or a text file in, one HDF5 file of
embeddings out (what ``openmusk embed`` and ``openmusk zeroshot`` run).

>>> from openmusk.encoders.files import embed_images, embed_texts
>>> embed_images(["tiles/"], "tiles.h5", encoder="musk", kind="probe")     # or any registry name
>>> embed_texts("reports.csv", "reports.h5")                               # long reports: windows

An output holds ``features`` (N, D) float32 with the encoder's attributes
(:func:`openmusk.encoders.encoder_info`, read back with
:func:`openmusk.data.features_h5.read_encoder_info`) and ``names`` (image paths) or ``texts``;
it is written atomically. Unreadable images are skipped and listed in ``OUT.errors.csv``.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Embeddings", "ZERO_SHOT_TEMPLATES", "embed_images", "embed_texts", "read_texts", "zero_shot_image"]

ZERO_SHOT_TEMPLATES = ("{c}.", "an H&E image of {c}.", "a histopathology image of {c}.",
                       "an image of {c} tissue.", "a pathology slide showing {c}.")


@dataclass
class Embeddings:
    """What an embed call wrote: the file, its rows and the inputs that could not be read."""

    path: Path
    features: np.ndarray
    names: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)


def _encoder(encoder: Any, device: Any, precision: str | None, kwargs: dict[str, Any]) -> Any:
    """``encoder`` itself, or the registry encoder of that name built with ``kwargs``."""
    if not isinstance(encoder, str):
        return encoder
    from openmusk.encoders.base import load_encoder

    return load_encoder(encoder, device=device, precision=precision, **kwargs)


def _attrs(enc: Any, kind: str, normalize: bool, legacy_kind: str) -> dict[str, Any]:
    """The ``features`` attributes: the encoder's record plus the keys earlier files carried."""
    from openmusk.encoders.base import encoder_info
    from openmusk.model import MuskConfig

    info = encoder_info(enc, kind)
    attrs = {**info, "kind": legacy_kind, "normalized": bool(normalize), "weights": info["encoder_weights"]}
    config = getattr(getattr(enc, "model", None), "config", None)
    if isinstance(config, MuskConfig):
        attrs["config"] = config.to_dict()
    return attrs


def embed_images(inputs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
                 encoder: Any = "musk", kind: str = "embed", normalize: bool = True, batch_size: int = 32,
                 num_workers: int = 2, progress: bool = True, device: Any = None,
                 precision: str | None = None, **encoder_kwargs: Any) -> Embeddings:
    """Embed image files and folders (searched recursively) into ``out``.

    ``encoder`` is a registry name (built with ``device``, ``precision`` and ``encoder_kwargs``,
    e.g. ``weights=``) or an encoder; ``kind`` is ``embed`` (cross-modal embedding) or ``probe``
    (features for probes and MIL: MUSK's 2D multiscale CLS).
    """
    from openmusk.data.datasets import ImageFilesDataset
    from openmusk.data.features_h5 import write_arrays
    from openmusk.encoders.embed import encode_dataset

    dataset = ImageFilesDataset(inputs)
    enc = _encoder(encoder, device, precision, encoder_kwargs)
    fs = encode_dataset(enc, dataset, kind=kind, batch_size=batch_size, num_workers=num_workers,
                        progress=progress, normalize=normalize)
    names = [dataset.keys[i] for i in fs.index]
    legacy = "multiscale" if kind == "probe" and getattr(enc, "multiscale", False) else "embedding"
    feats = fs.features.astype(np.float32)
    write_arrays(out, {"features": feats, "names": names},
                 dataset_attrs={"features": _attrs(enc, kind, normalize, legacy)})
    failed = [(dataset.keys[i], reason) for i, reason in fs.failed]
    errors = Path(f"{out}.errors.csv")
    if failed:
        from openmusk.core.io import atomic_path

        with atomic_path(errors, suffix=".csv.tmp") as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([("file", "error"), *failed])
    elif errors.exists():
        errors.unlink()  # from an earlier run over other inputs
    return Embeddings(Path(out), feats, names, failed)


def read_texts(path: str | os.PathLike, column: str = "text") -> list[str]:
    """Texts of a ``.txt`` (one per non-empty line) or the ``column`` of a ``.csv``/``.tsv`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    from openmusk.core.io import read_text

    text = read_text(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no column {column!r}; columns are {reader.fieldnames}")
        return [row[column] or "" for row in reader]
    return [line.rstrip("\n") for line in text.splitlines() if line.strip()]


@torch.no_grad()
def _text_batch(enc: Any, texts: list[str], raw: bool) -> torch.Tensor:
    """Embeddings of one batch; ``raw``: MUSK's CLS before the head, unnormalised, by the same
    window-and-combine rule as the default embedding (:func:`openmusk.text.report_embeddings`)."""
    if not raw:
        return enc.encode_text(texts)
    from openmusk.core.runtime import autocast
    from openmusk.text.report import report_embeddings

    if not hasattr(enc, "tokenizer") or not hasattr(getattr(enc, "model", None), "encode_text"):
        raise ValueError(f"raw text features need a MUSK encoder, not {enc.name!r}")
    with autocast(enc.device, enc.precision):
        return report_embeddings(enc.model, enc.tokenizer, texts, max_len=getattr(enc, "max_len", 100),
                                 head=False, normalize=False)


def embed_texts(texts: str | os.PathLike | Sequence[str], out: str | os.PathLike, encoder: Any = "musk",
                column: str = "text", batch_size: int = 64, raw: bool = False, progress: bool = True,
                device: Any = None, precision: str | None = None, **encoder_kwargs: Any) -> Embeddings:
    """Embed texts (a list, or a file read by :func:`read_texts`) into ``out``.

    Texts longer than the model's 100 tokens are embedded window by window and combined, never cut
    (:func:`openmusk.text.report_embeddings`); an empty text is an error naming it.
    """
    from tqdm.auto import tqdm

    from openmusk.data.features_h5 import write_arrays

    items = read_texts(texts, column) if isinstance(texts, (str, os.PathLike)) else list(texts)
    if not items:
        raise ValueError(f"{texts if isinstance(texts, (str, os.PathLike)) else 'texts'}: no texts")
    enc = _encoder(encoder, device, precision, encoder_kwargs)
    if not enc.has_text:
        raise ValueError(f"encoder {enc.name!r} has no text tower")
    feats = np.concatenate([_text_batch(enc, items[s:s + batch_size], raw).float().cpu().numpy()
                            for s in tqdm(range(0, len(items), batch_size), desc="embedding texts",
                                          unit="batch", disable=not progress, file=sys.stderr)])
    feats = feats.astype(np.float32)
    write_arrays(out, {"features": feats, "texts": items},
                 dataset_attrs={"features": _attrs(enc, "text", not raw, "text")})
    return Embeddings(Path(out), feats, items)


def zero_shot_image(image: Any, labels: Sequence[str | Sequence[str]], encoder: Any = "musk",
                    templates: Sequence[str] = ZERO_SHOT_TEMPLATES, device: Any = None,
                    precision: str | None = None, **encoder_kwargs: Any) -> list[tuple[str, float]]:
    """(label, probability) of an image (a path or PIL image), most likely first.

    Each label is embedded as the mean of its prompts (:func:`openmusk.encoders.zero_shot_weights`;
    a label may be a list of synonyms, named by its first); probabilities are the softmax of
    ``exp(logit_scale) * cosine`` (the CLIP convention; scale 100 for models without one).
    """
    from openmusk.core.images import open_image, to_rgb
    from openmusk.encoders.embed import zero_shot_weights

    if len(labels) < 2:
        raise ValueError("zero-shot classification needs at least two labels")
    enc = _encoder(encoder, device, precision, encoder_kwargs)
    x = enc.transform(open_image(image) if isinstance(image, (str, os.PathLike)) else to_rgb(image)).unsqueeze(0)
    weights = torch.from_numpy(zero_shot_weights(enc, labels, templates))
    emb = enc.encode_image(x, kind="embed").float().cpu()
    scale = getattr(getattr(enc, "model", None), "logit_scale", None)
    scale = float(scale.detach().float().exp()) if isinstance(scale, torch.Tensor) else 100.0
    probs = (scale * emb @ weights.t()).softmax(-1)[0]
    names = [c if isinstance(c, str) else c[0] for c in labels]
    return sorted(zip(names, probs.tolist()), key=lambda t: -t[1])
