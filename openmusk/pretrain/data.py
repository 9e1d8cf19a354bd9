"""Pretraining corpora: writing image / text / image-text shards, and decoding their samples.

Shards are WebDataset tars (:mod:`openmusk.data.shards`): an image sample holds ``jpg`` (or
``png``), a text sample ``txt``, a pair both. :func:`make_shards` converts a folder of images, a
CSV (image path and/or text columns) or plain text files (one text per line). The decoders turn a
raw sample into the tensors a stage needs, drawing augmentations and masks from the sample's own
generator (see :mod:`openmusk.pretrain.stream`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from openmusk.core.images import open_image
from openmusk.data.augment import AugmentConfig, PathologyAugment
from openmusk.data.shards import ShardWriter
from openmusk.pretrain.masking import block_mask, mask_text, word_spans
from openmusk.text.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["IMAGE_EXTS", "SLIDE_EXTS", "make_shards", "text_windows", "make_slide_shards", "ImageDecoder",
           "TextDecoder", "PairDecoder"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "tif", "tiff", "webp")
SLIDE_EXTS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")


def _encode_image(path: Path, max_side: int | None, quality: int = 95) -> bytes:
    """Re-encode an image file as JPEG bytes, shrunk so its longer side is at most ``max_side``."""
    im = open_image(path)
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _rows(source: Path, kind: str, image_column: str, text_column: str) -> Iterator[tuple[str, Path | None, str | None]]:
    """(key, image path, text) for every item of a folder, CSV or text file."""
    if source.is_dir():
        if kind != "images":
            raise ValueError(f"{source}: a folder makes image shards; texts and pairs need a CSV or text file")
        files = sorted(p for p in source.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS)
        for i, p in enumerate(files):
            yield f"{i:09d}", p, None
    elif source.suffix.lower() in (".csv", ".tsv"):
        with open(source, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f, delimiter="\t" if source.suffix.lower() == ".tsv" else ",")
            need = {"images": [image_column], "texts": [text_column],
                    "pairs": [image_column, text_column]}[kind]
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{source}: missing column(s) {missing}; found {reader.fieldnames}")
            for i, row in enumerate(reader):
                img = row.get(image_column) if kind != "texts" else None
                img_path = None
                if img:
                    img_path = Path(img) if Path(img).is_absolute() else source.parent / img
                yield f"{i:09d}", img_path, row.get(text_column) if kind != "images" else None
    else:
        if kind != "texts":
            raise ValueError(f"{source}: a text file makes text shards only; use a CSV for {kind}")
        with open(source, encoding="utf-8", errors="surrogateescape") as f:
            for i, line in enumerate(f):
                if line.strip():
                    yield f"{i:09d}", None, line.strip()


def text_windows(text: str, width: int = 98, tokenizer: str | None = None) -> list[str]:
    """A long text as consecutive windows of whole words holding at most ``width`` SentencePiece
    pieces each (a text that fits is returned whole; a single longer word is a window of its own),
    so that every part of an article or report becomes a training sample instead of only its
    first ``width`` pieces."""
    from openmusk.text import get_tokenizer
    tok = get_tokenizer(tokenizer)
    words = text.split()
    if width <= 0 or not words:
        return [text]
    _, pad = tok(words, max_len=width + 2)
    counts = ((pad == 0).sum(1) - 2).tolist()
    if sum(counts) <= width:
        return [text]
    windows, current, used = [], [], 0
    for word, n in zip(words, counts):
        if current and used + n > width:
            windows.append(" ".join(current))
            current, used = [], 0
        current.append(word)
        used += n
    windows.append(" ".join(current))
    return windows


def make_shards(source: str | os.PathLike, output: str, kind: str = "images",
                maxcount: int = 10000, image_column: str = "image", text_column: str = "text",
                max_side: int | None = 1024, text_window: int = 98) -> dict:
    """Convert a folder / CSV / text file into WebDataset shards at ``output`` (``dir/x-%06d.tar``).

    ``kind`` is ``images``, ``texts`` or ``pairs``. A text of ``kind: texts`` longer than
    ``text_window`` pieces (98: what fits in 100 ids with ``<s>``/``</s>``; 0 keeps texts whole)
    becomes consecutive windows, one sample each (keys ``<row>_<window>``). Unreadable images and
    empty texts are skipped and reported; returns ``{"written", "skipped", "shards"}``.
    """
    if kind not in ("images", "texts", "pairs"):
        raise ValueError(f"kind must be images, texts or pairs, got {kind!r}")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    written, skipped = 0, []
    with ShardWriter(output, maxcount=maxcount) as writer:
        for key, img_path, text in tqdm(_rows(source, kind, image_column, text_column),
                                        desc=f"make-shards {kind}", unit="sample"):
            sample: dict = {"__key__": key}
            try:
                if kind != "texts":
                    if img_path is None:
                        raise ValueError("no image path")
                    sample["jpg"] = _encode_image(img_path, max_side)
                if kind != "images":
                    if not text or not text.strip():
                        raise ValueError("empty text")
                    if any("\udc80" <= c <= "\udcff" for c in text):  # undecodable bytes, kept by surrogateescape
                        raise ValueError(f"{source} data row {int(key) + 1}: text is not valid UTF-8")
                    sample["txt"] = text.strip()
            except (OSError, ValueError) as e:
                skipped.append(f"{key} ({img_path or source}): {e}")
                print(f"make-shards: skipped {skipped[-1]}", file=sys.stderr)
                continue
            parts = text_windows(sample["txt"], text_window) if kind == "texts" else [None]
            for j, part in enumerate(parts):
                if part is not None and len(parts) > 1:
                    sample = {"__key__": f"{key}_{j:04d}", "txt": part}
                writer.write(sample)
                written += 1
        shards = [str(p) for p in writer.close()]
    return {"written": written, "skipped": skipped, "shards": shards}


def make_slide_shards(source: str | os.PathLike, output: str, fields_per_slide: int = 100,
                      size: int = 384, mpps: tuple[float, ...] = (1.0, 0.5, 0.25),
                      min_tissue: float = 0.5, maxcount: int = 10000, seed: int = 0) -> dict:
    """Sample tissue fields of view (x10/x20/x40 = 1.0/0.5/0.25 µm/px) from slides into image shards.

    ``source`` is one slide or a folder of slides; each sample holds ``jpg`` and ``json``
    (slide, level-0 centre, mpp). Slides that cannot be read are skipped and reported.
    """
    from openmusk.data.augment import random_fields_of_view
    source = Path(source)
    slides = [source] if source.is_file() else sorted(
        p for p in source.rglob("*") if p.suffix.lower() in SLIDE_EXTS)
    if not slides:
        raise FileNotFoundError(f"{source}: no slides ({', '.join(SLIDE_EXTS)}) found")
    written, skipped = 0, []
    with ShardWriter(output, maxcount=maxcount) as writer:
        for i, slide in enumerate(tqdm(slides, desc="make-shards slides", unit="slide")):
            try:
                fovs = random_fields_of_view(slide, fields_per_slide, size, np.random.default_rng([seed, i]),
                                             mpps, min_tissue)
            except Exception as e:  # noqa: BLE001 - an unreadable slide is skipped and reported
                skipped.append(f"{slide}: {type(e).__name__}: {e}")
                print(f"make-shards: skipped {skipped[-1]}", file=sys.stderr)
                continue
            for j, (img, mpp, x, y) in enumerate(fovs):
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=95)
                meta = {"slide": str(slide), "x": x, "y": y, "mpp": mpp}
                writer.write({"__key__": f"{i:06d}_{j:06d}", "jpg": buf.getvalue(), "json": json.dumps(meta)})
                written += 1
        shards = [str(p) for p in writer.close()]
    return {"written": written, "skipped": skipped, "shards": shards}


def _image_bytes(sample: dict) -> bytes:
    """The image member of a sample, naming the sample when it has none."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise ValueError(f"no image member ({'/'.join(IMAGE_EXTS)}) in sample with {sorted(sample)}")


def _text(sample: dict) -> str:
    """The text member of a sample."""
    if "txt" not in sample:
        raise ValueError(f"no txt member in sample with {sorted(sample)}")
    return sample["txt"].decode("utf-8")


@dataclass
class ImageDecoder:
    """Image sample -> ``image`` (augmented tensor) and, with ``mask_ratio``, a block ``vision_mask``
    of round(``mask_ratio`` x patches) patches in blocks of ``min_block``..``max_block``."""

    augment: AugmentConfig
    patch_size: int = 16
    mask_ratio: float = 0.0
    min_block: int = 16
    max_block: int | None = 100

    def __post_init__(self) -> None:
        self._aug = PathologyAugment(self.augment)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        with Image.open(io.BytesIO(_image_bytes(sample))) as im:
            out = {"image": self._aug(im, rng)}
        if self.mask_ratio > 0:
            grid = self.augment.img_size // self.patch_size
            n = int(round(self.mask_ratio * grid * grid))
            out["vision_mask"] = torch.from_numpy(block_mask(grid, n, rng, self.min_block, self.max_block)).flatten()
        return out


def _pack(pieces: list[int], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> pieces </s>`` cut to ``max_len`` and right-padded: (ids, padding mask with 1 = pad)."""
    ids = [BOS_ID, *pieces[:max_len - 2], EOS_ID]
    out = torch.full((max_len,), PAD_ID, dtype=torch.long)
    out[:len(ids)] = torch.tensor(ids)
    pad = torch.ones(max_len, dtype=torch.long)
    pad[:len(ids)] = 0
    return out, pad


@dataclass
class TextDecoder:
    """Text sample -> ``input_ids``, ``padding_mask`` and, with ``mask_ratio``, masked ids and labels.

    ``whole_word``: ``authors`` (stage 1 of their code: word spans counted from position 0, one to
    the left of the words), ``aligned`` (spans on the words), ``none``; ``targets``: see
    :func:`~openmusk.pretrain.masking.mask_text`; ``trim``: drop the first and last pieces of the
    text, as their stage-2 caption reader does (``tokens[1:-1]``).
    """

    max_len: int = 100
    mask_ratio: float = 0.0
    tokenizer: str | None = None
    whole_word: Literal["authors", "aligned", "none"] = "none"
    targets: Literal["mask", "selected"] = "mask"
    trim: bool = False

    def _tok(self):
        from openmusk.text import get_tokenizer
        return get_tokenizer(self.tokenizer)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        text = _text(sample)
        if not text.strip():
            raise ValueError("empty text")
        tok = self._tok()
        pieces = tok.encode(text, add_special_tokens=False)
        ids, pad = _pack(pieces[1:-1] if self.trim else pieces, self.max_len)
        out = {"input_ids": ids, "padding_mask": pad}
        if self.mask_ratio > 0:
            spans = None
            if self.whole_word != "none":
                counts = [len(tok.encode(w, add_special_tokens=False)) for w in text.split()]
                spans = word_spans(counts, offset=0 if self.whole_word == "authors" else 1)
            out["masked_ids"], out["mlm_labels"] = mask_text(ids, self.mask_ratio, rng, spans, self.targets)
        return out


@dataclass
class PairDecoder:
    """Image-text sample -> image tensor, caption ids, and the masked caption for stage 2."""

    images: ImageDecoder
    texts: TextDecoder

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        return {**self.images(sample, rng), **self.texts(sample, rng), "key": sample["__key__"]}
