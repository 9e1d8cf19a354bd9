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
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from openmusk.data.augment import AugmentConfig, PathologyAugment
from openmusk.data.shards import ShardWriter
from openmusk.pretrain.masking import block_mask, mask_text

__all__ = ["IMAGE_EXTS", "SLIDE_EXTS", "make_shards", "make_slide_shards", "ImageDecoder",
           "TextDecoder", "PairDecoder"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "tif", "tiff", "webp")
SLIDE_EXTS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")


def _encode_image(path: Path, max_side: int | None, quality: int = 95) -> bytes:
    """Re-encode an image file as JPEG bytes, shrunk so its longer side is at most ``max_side``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
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
        with open(source, newline="") as f:
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
        with open(source, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    yield f"{i:09d}", None, line.strip()


def make_shards(source: str | os.PathLike, output: str, kind: str = "images",
                maxcount: int = 10000, image_column: str = "image", text_column: str = "text",
                max_side: int | None = 1024) -> dict:
    """Convert a folder / CSV / text file into WebDataset shards at ``output`` (``dir/x-%06d.tar``).

    ``kind`` is ``images``, ``texts`` or ``pairs``. Unreadable images and empty texts are skipped
    and reported; returns ``{"written", "skipped", "shards"}``.
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
                    sample["txt"] = text.strip()
            except (OSError, ValueError) as e:
                skipped.append(f"{key} ({img_path or source}): {e}")
                print(f"make-shards: skipped {skipped[-1]}", file=sys.stderr)
                continue
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
    """Image sample -> ``image`` (augmented tensor) and, with ``mask_ratio``, a block ``vision_mask``."""

    augment: AugmentConfig
    patch_size: int = 16
    mask_ratio: float = 0.0
    min_block: int = 16

    def __post_init__(self) -> None:
        self._aug = PathologyAugment(self.augment)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        with Image.open(io.BytesIO(_image_bytes(sample))) as im:
            out = {"image": self._aug(im, rng)}
        if self.mask_ratio > 0:
            grid = self.augment.img_size // self.patch_size
            n = int(round(self.mask_ratio * grid * grid))
            out["vision_mask"] = torch.from_numpy(block_mask(grid, n, rng, self.min_block)).flatten()
        return out


@dataclass
class TextDecoder:
    """Text sample -> ``input_ids``, ``padding_mask`` and, with ``mask_ratio``, masked ids and labels."""

    max_len: int = 100
    mask_ratio: float = 0.0
    tokenizer: str | None = None

    def _tok(self):
        from openmusk.text import get_tokenizer
        return get_tokenizer(self.tokenizer)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        text = _text(sample)
        if not text.strip():
            raise ValueError("empty text")
        ids, pad = self._tok()([text], max_len=self.max_len)
        out = {"input_ids": ids[0], "padding_mask": pad[0]}
        if self.mask_ratio > 0:
            out["masked_ids"], out["mlm_labels"] = mask_text(ids[0], self.mask_ratio, rng)
        return out


@dataclass
class PairDecoder:
    """Image-text sample -> image tensor, text ids, and the 30%-masked text for the auxiliary decoder."""

    images: ImageDecoder
    texts: TextDecoder

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        return {**self.images(sample, rng), **self.texts(sample, rng), "key": sample["__key__"]}
