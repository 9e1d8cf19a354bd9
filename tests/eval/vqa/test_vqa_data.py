"""Reading VQA sets: generic JSONL/CSV tables and PathVQA parquet as it ships, with clear errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import openmusk
from openmusk.eval.vqa import VQACollate, VQADataset, open_vqa, read_pathvqa_parquet, read_vqa_table


def test_table_reads_splits_and_images(vqa_table: Path) -> None:
    data = read_vqa_table(vqa_table)
    rows = [json.loads(line) for line in open(vqa_table)]
    assert len(data) == len(rows) == 360
    summary = data.summary()
    assert {s: v["questions"] for s, v in summary.items()} == {"train": 216, "validation": 54,
                                                                "test": 90}
    # closed questions are exactly the yes/no tissue questions
    assert summary["test"]["closed"] == sum(r["split"] == "test" and r["answer"] in ("yes", "no")
                                            for r in rows)
    test = data.split("test")
    assert len(test) == 90 and set(test.splits) == {"test"}
    img = test.load_image(0)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert len(open_vqa(vqa_table, split="val")) == 54          # aliases accepted


def test_parquet_as_on_the_hub_matches_the_table(vqa_table: Path, vqa_parquet: Path) -> None:
    table = read_vqa_table(vqa_table)
    parquet = read_pathvqa_parquet(vqa_parquet)                  # a folder of {split}-*.parquet
    for split in ("train", "validation", "test"):
        t, p = table.split(split), parquet.split(split)
        assert p.questions == t.questions and p.answers == t.answers
    t, p = table.split("test"), open_vqa(vqa_parquet / "test-00000-of-00001.parquet")
    a = np.asarray(t.load_image(3), dtype=np.float32)
    b = np.asarray(p.load_image(3), dtype=np.float32)
    other = np.asarray(p.load_image(40), dtype=np.float32)
    assert np.abs(a - b).mean() < 8.0 < np.abs(a - other).mean()   # the same tile, after JPEG
    assert p.image_ids[3] == Path(t.image_ids[3]).name


def test_bad_rows_are_named(tmp_path: Path, vqa_table: Path) -> None:
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "question", "answer"])
        w.writerow(["a.png", "is it?", "yes"])
        w.writerow(["b.png", "", "no"])
    with pytest.raises(ValueError, match=r"bad.csv: row 2: missing \['question'\]"):
        read_vqa_table(bad)
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"image": "a.png", "question": "q", "answer": "a", "split": "holdout"}\n')
    with pytest.raises(ValueError, match="row 1: unknown split 'holdout'"):
        read_vqa_table(jl)
    jl.write_text('{"image": "a.png"\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        read_vqa_table(jl)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [b"x"], "question": ["q"], "answer": ["a"]}),
                   tmp_path / "questions.parquet")
    with pytest.raises(ValueError, match="questions.parquet: no 'split' column"):
        read_pathvqa_parquet(tmp_path / "questions.parquet")
    with pytest.raises(ValueError, match="no rows in split 'validation'"):
        read_vqa_table(vqa_table).split("test").split("validation")


def test_unreadable_image_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 100, 150)).save(tmp_path / "ok.png")
    table = tmp_path / "q.jsonl"
    table.write_text("".join(json.dumps({"image": n, "question": "is it pink?", "answer": "yes",
                                         "question_id": n}) + "\n" for n in ("ok.png", "broken.png")))
    data = read_vqa_table(table)
    assert data.splits == ["test", "test"]                        # no split column: test
    ds = VQADataset(data, openmusk.get_transform(img_size=32))
    batch = VQACollate(openmusk.get_tokenizer(), max_len=8)([ds[0], ds[1]])
    assert batch["index"].tolist() == [0]
    assert batch["images"].shape == (1, 3, 32, 32)
    assert len(batch["errors"]) == 1 and "broken.png" in batch["errors"][0][1]
    assert batch["input_ids"][0, 0] == 0 and torch.all(batch["padding_mask"].sum(1) < 8)
