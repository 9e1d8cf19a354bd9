"""A VQA set with known structure, cut from the real H&E fixtures at every run.

Three question types whose answers follow from the image, each balanced so that the question
alone predicts no better than chance:
* "is there tissue in this image?" (yes/no) on tissue vs white-background tiles of the SVS slide;
* "what colour is the stain?" (blue/brown/pink) on HGSC tiles whose hue is set to that colour;
* "is this tumour or stroma?" on tiles of the HGSC tumour-nest crop vs the stroma crop.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TILE = 128          # pixels read from the slide / crops
SIZE = 64           # pixels written (the test model's image size)
HUES = {"blue": 150, "brown": 20, "pink": 230}   # PIL HSV hue (0..255)
QUESTIONS = {
    "tissue": ["is there tissue in this image?", "does this image contain tissue?"],
    "colour": ["what colour is the stain?", "what is the colour of the stain?"],
    "tumour": ["is this tumour or stroma?", "does this show tumour or stroma?"],
}


def _slide_tiles(svs: Path) -> tuple[list[Image.Image], list[Image.Image]]:
    """Tissue tiles (>60% stained pixels) and background tiles (<2%) of the real slide."""
    import openslide

    slide = openslide.OpenSlide(str(svs))
    w, h = slide.dimensions
    tissue, background = [], []
    for y in range(0, h - TILE + 1, TILE):
        for x in range(0, w - TILE + 1, TILE):
            tile = slide.read_region((x, y), 0, (TILE, TILE)).convert("RGB")
            a = np.asarray(tile, dtype=np.float32)
            stained = ((a.max(-1) - a.min(-1) > 25) & (a.mean(-1) < 220)).mean()
            if stained > 0.6:
                tissue.append(tile)
            elif stained < 0.02:
                background.append(tile)
    slide.close()
    return tissue, background


def _crop_tiles(path: Path) -> list[Image.Image]:
    """Non-overlapping tiles of an H&E crop."""
    img = Image.open(path).convert("RGB")
    return [img.crop((x, y, x + TILE, y + TILE)) for y in range(0, img.height - TILE + 1, TILE)
            for x in range(0, img.width - TILE + 1, TILE)]


def _recolour(tile: Image.Image, hue: int) -> Image.Image:
    """The tile with every pixel's hue set to ``hue`` (saturation and value kept)."""
    h, s, v = tile.convert("HSV").split()
    return Image.merge("HSV", (h.point(lambda _: hue), s, v)).convert("RGB")


def build_vqa_set(real_dir: Path, out: Path, seed: int = 0) -> Path:
    """Write PNG tiles and ``vqa.jsonl`` (image, question, answer, split, question_id) to ``out``."""
    rng = random.Random(seed)
    tissue, background = _slide_tiles(real_dir / "cmu_small_region.svs")
    nest, stroma = _crop_tiles(real_dir / "hgsc_nest.jpg"), _crop_tiles(real_dir / "hgsc_stromal_he.jpg")
    for tiles in (tissue, background, nest, stroma):
        rng.shuffle(tiles)
    items: list[tuple[str, Image.Image, str]] = []
    items += [("tissue", t, "yes") for t in tissue[:60]] + [("tissue", t, "no") for t in background[:60]]
    items += [("tumour", t, "tumour") for t in nest[:60]] + [("tumour", t, "stroma") for t in stroma[:60]]
    colour_tiles = nest[60:120] + stroma[60:120]
    rng.shuffle(colour_tiles)
    items += [("colour", _recolour(t, HUES[c]), c) for c, t in
              zip([c for c in HUES for _ in range(40)], colour_tiles)]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    strata: dict[tuple[str, str], list[int]] = {}
    for i, (kind, _, answer) in enumerate(items):
        strata.setdefault((kind, answer), []).append(i)
    split_of, phrasing = {}, {}
    for idx in strata.values():  # every answer of every question type split 60/15/25
        rng.shuffle(idx)
        n = len(idx)
        for j, i in enumerate(idx):
            split_of[i] = "train" if j < 0.6 * n else "validation" if j < 0.75 * n else "test"
            phrasing[i] = j % 2  # each answer asked equally often in each phrasing
    for i, (kind, tile, answer) in enumerate(items):
        name = f"images/{kind}_{i:04d}.png"
        tile.resize((SIZE, SIZE), Image.BICUBIC).save(out / name)
        rows.append({"image": name, "question": QUESTIONS[kind][phrasing[i]], "answer": answer,
                     "split": split_of[i], "question_id": f"q{i:04d}"})
    with open(out / "vqa.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return out / "vqa.jsonl"


def write_pathvqa_parquet(table: Path, out: Path) -> Path:
    """The same questions laid out as PathVQA ships on the hub: data/{split}-00000-of-00001.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in open(table)]
    out.mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split in ("train", "validation", "test"):
        part = [r for r in rows if r["split"] == split]
        images = []
        for r in part:
            buf = io.BytesIO()
            Image.open(table.parent / r["image"]).convert("RGB").save(buf, format="JPEG", quality=95)
            images.append({"bytes": buf.getvalue(), "path": Path(r["image"]).name})
        pq.write_table(pa.table({"image": pa.array(images, type=image_type),
                                 "question": [r["question"] for r in part],
                                 "answer": [r["answer"] for r in part]}),
                       out / f"{split}-00000-of-00001.parquet")
    return out


@pytest.fixture(scope="session")
def vqa_table(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vqa.jsonl`` of the known-structure set (built once per session from the real files)."""
    return build_vqa_set(real_dir, tmp_path_factory.mktemp("vqa_set"))


@pytest.fixture(scope="session")
def vqa_parquet(vqa_table: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The known-structure set as PathVQA-style parquet files."""
    return write_pathvqa_parquet(vqa_table, tmp_path_factory.mktemp("pathvqa") / "data")
