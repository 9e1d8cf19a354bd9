"""VQA data: PathVQA parquet as it ships on the hub, generic JSONL/CSV tables, a torch dataset.

A ``VQAData`` holds questions, answers and a way to decode each row's image lazily (parquet image
bytes stay in a memory-mapped Arrow table; table images are files), so 30k questions over a few
thousand images cost little memory. Rows whose image cannot be decoded are skipped and reported by
the training and evaluation loops instead of stopping them.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from openmusk.eval.vqa.answers import AnswerVocab, is_closed

__all__ = ["VQAData", "open_vqa", "read_pathvqa_parquet", "read_vqa_table", "VQADataset",
           "VQACollate", "SPLIT_ALIASES", "canonical_split"]

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "validation",
                 "valid": "validation", "validation": "validation", "dev": "validation",
                 "test": "test", "testing": "test"}
_REQUIRED = ("image", "question", "answer")


def canonical_split(name: str, where: str) -> str:
    """Map a split name to train/validation/test, naming the file when it is unknown."""
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {name!r}; use one of {sorted(set(SPLIT_ALIASES))}")
    return SPLIT_ALIASES[key]


@dataclass
class VQAData:
    """Questions, answers, splits and lazily decoded images of one VQA dataset."""

    questions: list[str]
    answers: list[str]
    splits: list[str]
    question_ids: list[str]
    image_ids: list[str]
    image_loader: Callable[[int], Image.Image] = field(repr=False)
    rows: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        n = len(self.questions)
        if not self.rows:
            self.rows = list(range(n))
        lengths = {len(x) for x in (self.answers, self.splits, self.question_ids, self.image_ids,
                                     self.rows)}
        if lengths != {n}:
            raise ValueError("VQAData columns have different lengths")

    def __len__(self) -> int:
        return len(self.questions)

    def load_image(self, i: int) -> Image.Image:
        """Decode the image of row ``i`` as PIL RGB."""
        from openmusk.core.images import to_rgb

        return to_rgb(self.image_loader(self.rows[i]), f"image of row {self.rows[i]}")

    def closed(self) -> list[bool]:
        """Per question: True when the reference answer is yes/no (a closed question)."""
        return [is_closed(a) for a in self.answers]

    def select(self, indices: Sequence[int]) -> "VQAData":
        """A view on the given rows (images still decoded lazily from the same source)."""
        idx = list(indices)
        return VQAData([self.questions[i] for i in idx], [self.answers[i] for i in idx],
                       [self.splits[i] for i in idx], [self.question_ids[i] for i in idx],
                       [self.image_ids[i] for i in idx], self.image_loader,
                       [self.rows[i] for i in idx])

    def split(self, name: str) -> "VQAData":
        """The rows of one split (train / validation / test; aliases such as 'val' accepted)."""
        want = canonical_split(name, "split()")
        idx = [i for i, s in enumerate(self.splits) if s == want]
        if not idx:
            raise ValueError(f"no rows in split {want!r}; splits present: {sorted(set(self.splits))}")
        return self.select(idx)

    def summary(self) -> dict:
        """Counts of questions, images and closed questions per split."""
        out = {}
        closed = self.closed()
        for s in sorted(set(self.splits)):
            idx = [i for i, x in enumerate(self.splits) if x == s]
            out[s] = {"questions": len(idx), "images": len({self.image_ids[i] for i in idx}),
                      "closed": sum(closed[i] for i in idx)}
        return out


class _ParquetImages:
    """Decode row images of several parquet files; a row key is file_index << 32 | row."""

    def __init__(self, datasets: list) -> None:
        self.datasets = datasets

    def __call__(self, key: int) -> Image.Image:
        return self.datasets[key >> 32].load_image(key & 0xFFFFFFFF)


class _FileImages:
    """Open row images from files."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __call__(self, row: int) -> Image.Image:
        from openmusk.core.images import open_image

        return open_image(self.paths[row])


def _parquet_files(source: str | os.PathLike | Sequence) -> list[Path]:
    """Parquet files named by a file, a folder (searched recursively) or a list."""
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    p = Path(source)
    if p.is_dir():
        files = sorted(p.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{p}: no .parquet files in this folder")
        return files
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    return [p]


def _split_from_filename(path: Path) -> str | None:
    """PathVQA on the hub names its files ``train-00000-of-00003.parquet`` etc."""
    for part in [path.name.split("-")[0].split(".")[0], path.parent.name]:
        if part.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[part.lower()]
    return None


def read_pathvqa_parquet(source: str | os.PathLike | Sequence,
                         split: str | None = None) -> VQAData:
    """Read PathVQA parquet (image struct with bytes, question, answer; split column or file names).

    Files come from the hub as ``data/{train,validation,test}-0000x-of-0000y.parquet``; a folder is
    searched recursively. Images are decoded only when a row is used.
    """
    import pyarrow as pa

    from openmusk.data.datasets import ParquetDataset

    datasets, questions, answers, splits, qids, image_ids, rows = [], [], [], [], [], [], []
    for path in _parquet_files(source):
        ds = ParquetDataset(path)
        table = ds.table
        missing = [c for c in _REQUIRED if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {table.column_names}")
        if "split" in table.column_names:
            file_splits = [canonical_split(s, str(path)) for s in table.column("split").to_pylist()]
        else:
            s = _split_from_filename(path)
            if s is None:
                raise ValueError(f"{path}: no 'split' column and the file name does not start with "
                                 f"train/validation/test")
            file_splits = [s] * table.num_rows
        image_col = table.column("image").combine_chunks()
        image_paths = (image_col.field("path").to_pylist() if pa.types.is_struct(image_col.type)
                       and image_col.type.get_field_index("path") >= 0 else [None] * table.num_rows)
        q, a = table.column("question").to_pylist(), table.column("answer").to_pylist()
        file_qids = table.column("question_id").to_pylist() if "question_id" in table.column_names \
            else [f"{path.stem}:{r}" for r in range(table.num_rows)]
        for r in range(table.num_rows):
            if q[r] is None or a[r] is None:
                raise ValueError(f"{path}: row {r} has an empty question or answer")
            questions.append(str(q[r]))
            answers.append(str(a[r]))
            splits.append(file_splits[r])
            qids.append(str(file_qids[r]))
            image_ids.append(image_paths[r] or f"{path.stem}:{r}")
            rows.append(len(datasets) << 32 | r)
        datasets.append(ds)
    data = VQAData(questions, answers, splits, qids, image_ids, _ParquetImages(datasets), rows)
    return data.split(split) if split else data


def _table_rows(path: Path) -> list[dict]:
    """Rows of a JSONL or CSV file as dicts, naming the line of a malformed JSON row."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from e
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    raise ValueError(f"{path}: expected .jsonl, .csv or .tsv")


def read_vqa_table(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                   split: str | None = None) -> VQAData:
    """Read a JSONL/CSV table with image (path), question, answer and optional split/question_id.

    Relative image paths resolve against ``image_root`` (default: the table's folder). Rows without
    a split are put in 'test', so a plain table of questions can be evaluated as it is.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    root = Path(image_root) if image_root else path.parent
    rows = _table_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    questions, answers, splits, qids, images = [], [], [], [], []
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 1}"
        missing = [c for c in _REQUIRED if not str(row.get(c) or "").strip()]
        if missing:
            raise ValueError(f"{where}: missing {missing} (columns needed: {list(_REQUIRED)})")
        img = Path(str(row["image"]))
        images.append(str(img if img.is_absolute() else root / img))
        questions.append(str(row["question"]))
        answers.append(str(row["answer"]))
        splits.append(canonical_split(row["split"], where) if row.get("split") else "test")
        qids.append(str(row.get("question_id") or i))

    data = VQAData(questions, answers, splits, qids, list(images), _FileImages(images))
    return data.split(split) if split else data


def open_vqa(source: str | os.PathLike, split: str | None = None,
             image_root: str | os.PathLike | None = None) -> VQAData:
    """Open a VQA dataset: PathVQA parquet (file or folder) or a JSONL/CSV table."""
    p = Path(source)
    if p.is_dir() or p.suffix.lower() == ".parquet":
        return read_pathvqa_parquet(p, split=split)
    return read_vqa_table(p, image_root=image_root, split=split)


class VQADataset(torch.utils.data.Dataset):
    """Image tensor, question and answer class per row; undecodable images come back as errors."""

    def __init__(self, data: VQAData, transform: Callable[[Image.Image], torch.Tensor],
                 vocab: AnswerVocab | None = None, load_images: bool = True) -> None:
        self.data, self.transform, self.vocab, self.load_images = data, transform, vocab, load_images

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i, "question": self.data.questions[i],
                                "target": self.vocab.index(self.data.answers[i]) if self.vocab else -1}
        if self.load_images:
            try:
                item["image"] = self.transform(self.data.load_image(i))
            except (OSError, ValueError, SyntaxError) as e:
                item["error"] = f"question {self.data.question_ids[i]} " \
                                f"(image {self.data.image_ids[i]}): {type(e).__name__}: {e}"
        return item


class VQACollate:
    """Batch rows: stack images, tokenise questions, keep errors aside for the caller to report."""

    def __init__(self, tokenizer: Callable, max_len: int = 64) -> None:
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        good = [it for it in items if "error" not in it]
        batch: dict[str, Any] = {"errors": [(it["index"], it["error"]) for it in items if "error" in it],
                                 "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
                                 "target": torch.tensor([it["target"] for it in good], dtype=torch.long)}
        if good:
            ids, mask = self.tokenizer([it["question"] for it in good], max_len=self.max_len)
            batch["input_ids"], batch["padding_mask"] = ids, mask
            if "image" in good[0]:
                batch["images"] = torch.stack([it["image"] for it in good])
        return batch
