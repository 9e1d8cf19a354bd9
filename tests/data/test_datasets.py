"""The four dataset formats on real H&E tiles: same images and labels whichever way they are
stored, unreadable images skipped and named, bad tables rejected with the file and row."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from openmusk.data.datasets import (CsvDataset, ImageFilesDataset, ImageFolderDataset, ParquetDataset,
                                    ShardDataset, collate_skip_bad)
from openmusk.data.shards import ShardWriter


@pytest.fixture(scope="module")
def tiles(real_dir):
    """Six 128 px tiles each of the tumour nest and the stroma crop, with their labels."""
    out = []
    for name, label in (("hgsc_nest.jpg", "tumour"), ("hgsc_stromal_he.jpg", "stroma")):
        img = Image.open(real_dir / name).convert("RGB")
        for i in range(6):
            out.append((img.crop((i * 200, 300, i * 200 + 128, 428)), label))
    return out


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_all_formats_give_the_same_images_labels_and_captions(tiles, tmp_path):
    classes = ["stroma", "tumour"]
    rows = []
    for i, (img, label) in enumerate(tiles):
        p = tmp_path / "folder" / label / f"t{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p)
        rows.append((f"folder/{label}/t{i:02d}.png", label, f"{label} tile {i}"))
    (tmp_path / "t.tsv").write_text("image\tlabel\tcaption\n" + "\n".join("\t".join(r) for r in rows))
    with ShardWriter(str(tmp_path / "shards" / "s-%03d.tar"), maxcount=5) as w:
        for i, (img, label) in enumerate(tiles):
            w.write({"__key__": f"t{i:02d}", "png": _png(img), "cls": label, "txt": f"{label} tile {i}"})
    pq.write_table(pa.table({"image": [{"bytes": _png(img), "path": None} for img, _ in tiles],
                             "label": [lab for _, lab in tiles],
                             "caption": [f"{lab} tile {i}" for i, (_, lab) in enumerate(tiles)]}),
                   tmp_path / "t.parquet")

    folder = ImageFolderDataset(tmp_path / "folder")
    table = CsvDataset(tmp_path / "t.tsv", root=tmp_path, caption_column="caption", classes=classes)
    shards = ShardDataset(tmp_path / "shards", classes=classes)
    parquet = ParquetDataset(tmp_path / "t.parquet", label_column="label", caption_column="caption",
                             classes=classes)
    assert len(shards.shards) == 3  # 12 samples, 5 per shard
    assert folder.classes == classes
    # the folder lists stroma first; the others keep the order written
    order = [int(k.split("/t")[1][:2]) for k in folder.keys]
    expected = [classes.index(lab) for _, lab in tiles]
    assert [expected[i] for i in order] == folder.labels
    for ds in (table, shards, parquet):
        assert ds.labels == expected
        assert ds.captions == [f"{lab} tile {i}" for i, (_, lab) in enumerate(tiles)]
        for i in (0, 7, 11):
            assert np.array_equal(np.asarray(ds.load_image(i)), np.asarray(tiles[i][0]))
    assert parquet.row(3) == {"label": tiles[3][1], "caption": f"{tiles[3][1]} tile 3"}
    assert parquet.column("label")[:2] == [tiles[0][1], tiles[1][1]]


def test_unreadable_images_are_skipped_and_named(tiles, tmp_path):
    for i, (img, label) in enumerate(tiles[:4]):
        (tmp_path / label).mkdir(exist_ok=True)
        img.save(tmp_path / label / f"{i}.png")
    (tmp_path / "tumour" / "broken.png").write_bytes(b"not a png")
    ds = ImageFolderDataset(tmp_path, transform=lambda im: torch.from_numpy(np.asarray(im)).float())
    bad = ds.keys.index("tumour/broken.png")
    assert "broken.png" in ds.check_image(bad) and "cannot read image" in ds.check_image(bad)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_skip_bad)
    good, failed = [], []
    for images, idx, bad_idx in loader:
        good += idx.tolist()
        failed += bad_idx.tolist()
        if images is not None:
            assert images.shape[1:] == (128, 128, 3)
    assert failed == [bad] and sorted(good) == sorted(set(range(len(ds))) - {bad})


def test_image_files_mix_files_and_folders(tiles, tmp_path):
    nested = tmp_path / "a" / "deep"
    nested.mkdir(parents=True)
    tiles[0][0].save(nested / "z.png")
    tiles[1][0].save(tmp_path / "a" / "y.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    tiles[2][0].save(tmp_path / "single.png")
    ds = ImageFilesDataset([tmp_path / "single.png", tmp_path / "a"])
    assert ds.keys == [str(tmp_path / "single.png"), str(nested / "z.png"), str(tmp_path / "a" / "y.jpg")]
    assert np.array_equal(np.asarray(ds.load_image(1)), np.asarray(tiles[0][0]))
    assert ds.labels is None
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*missing"):
        ImageFilesDataset([tmp_path / "single.png", tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images with extensions"):
        ImageFilesDataset(tmp_path / "empty")


def test_bad_tables_name_the_file_and_row(tiles, tmp_path):
    tiles[0][0].save(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("image,label\na.png,tumour\na.png,necrosis\n")
    with pytest.raises(ValueError, match=r"t\.csv: row 1 label 'necrosis' is not one of"):
        CsvDataset(tmp_path / "t.csv", classes=["stroma", "tumour"])
    with pytest.raises(ValueError, match=r"t\.csv: missing column\(s\) \['caption'\]"):
        CsvDataset(tmp_path / "t.csv", caption_column="caption")
    (tmp_path / "ragged.csv").write_text("image,label\na.png,tumour\na.png,tumour,extra\n")
    with pytest.raises(ValueError, match=r"ragged\.csv: not a readable table"):
        CsvDataset(tmp_path / "ragged.csv")
    pq.write_table(pa.table({"img": [b"x"], "question": ["q"]}), tmp_path / "v.parquet")
    with pytest.raises(ValueError, match=r"v\.parquet: no image column 'image'"):
        ParquetDataset(tmp_path / "v.parquet")
    ds = ParquetDataset(tmp_path / "v.parquet", image_column="img")
    with pytest.raises(ValueError, match=r"v\.parquet row 0: cannot read image"):
        ds.load_image(0)
    (tmp_path / "x.tar").write_bytes(b"garbage" * 200)
    with pytest.raises(ValueError, match=r"x\.tar: not a readable tar shard"):
        ShardDataset(tmp_path / "x.tar")
