"""Image-caption sets as published: ARCH BookSet / PubmedSet and PathMMU (the MUSK authors' reading).

* ARCH (Gamper & Rajpoot): ``books_set/captions.json`` = ``{"0": {"figure_id", "letter",
  "caption", "uuid"}, ...}`` and ``books_set/images/<uuid>.<ext>``; ``pubmed_set/`` alike (its
  entries carry ``caption`` and ``uuid``). Rule: captions whose image is not in the download are
  left out (the release has some).
* PathMMU as the MUSK authors read it (``PathMMUDataset``): for each subset ``Book``,
  ``WebPathology``, ``Twitter``, every ``<subset>/GPTCaption/*.json`` (a mapping whose values carry
  ``img_path`` and ``caption``), images at ``<subset>/images/<img_path>``. Files are taken in
  sorted order (the authors' glob order is the file system's).
One caption per image; both have no split.
"""
from __future__ import annotations

import json
from pathlib import Path

from openmusk.eval.datasets.base import PublishedDataset, require

__all__ = ["read_bookset", "read_pathmmu", "PATHMMU_SUBSETS"]

PATHMMU_SUBSETS = ("Book", "WebPathology", "Twitter")


def _no_split(split: str | None, what: str) -> None:
    if split is not None:
        raise ValueError(f"{what} is published without splits; run it with the whole set")


def read_bookset(root: str | Path, split: str | None = None, subset: str = "books_set") -> PublishedDataset:
    """ARCH figures (``subset`` books_set or pubmed_set) that have an image, in caption-id order."""
    _no_split(split, f"ARCH {subset}")
    base = require(Path(root) / subset, f"ARCH {subset}")
    table = require(base / "captions.json", f"ARCH {subset} captions")
    entries = json.loads(table.read_text())
    images = {p.stem: p for p in (base / "images").iterdir() if p.is_file()} \
        if (base / "images").is_dir() else {}
    keys, paths, captions = [], [], []
    for key in sorted(entries, key=lambda k: (len(k), k)):
        e = entries[key]
        if "uuid" not in e or "caption" not in e:
            raise ValueError(f"{table}: entry {key!r} lacks uuid or caption")
        if e["uuid"] in images:
            keys.append(images[e["uuid"]].name)
            paths.append(images[e["uuid"]])
            captions.append(str(e["caption"]))
    return PublishedDataset(keys, paths, captions=captions)


def read_pathmmu(root: str | Path, split: str | None = None) -> PublishedDataset:
    """Every (image, caption) item of the GPTCaption files of the three subsets."""
    _no_split(split, "PathMMU")
    root = Path(root)
    keys, paths, captions = [], [], []
    for subset in PATHMMU_SUBSETS:
        folder = root / subset / "GPTCaption"
        if not folder.is_dir():
            continue
        for table in sorted(folder.glob("*.json")):
            data = json.loads(table.read_text())
            for item in (data.values() if isinstance(data, dict) else data):
                if "img_path" not in item or "caption" not in item:
                    raise ValueError(f"{table}: an item lacks img_path or caption: {item}")
                keys.append(f"{subset}/{item['img_path']}")
                paths.append(root / subset / "images" / item["img_path"])
                captions.append(str(item["caption"]))
    if not keys:
        raise FileNotFoundError(f"PathMMU: no <subset>/GPTCaption/*.json under {root} "
                                f"(subsets {PATHMMU_SUBSETS})")
    return PublishedDataset(keys, paths, captions=captions)
