"""Labelled and captioned image datasets read from the files users already have.

Four on-disk formats, one interface: an image folder (one sub-folder per class), a CSV/TSV table
(image path, label and/or caption), WebDataset tar shards and parquet files with image bytes (how
PathMMU / PathVQA ship on the Hugging Face hub); and plain image files and folders without labels
(:class:`ImageFilesDataset`, what ``openmusk embed images`` reads). Every dataset gives ``load_image(i)`` (PIL RGB),
``labels`` (class indices or None), ``captions`` (strings or None), ``classes`` and ``keys``;
``__getitem__`` returns ``(transform(image), i)`` and turns an unreadable image into ``(None, i)``
so a DataLoader can skip it and report it (see :func:`collate_skip_bad`).
"""
from __future__ import annotations

import numbers
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from PIL import Image

from openmusk.data.shards import list_shards

__all__ = ["ImageDataset", "ImageFilesDataset", "ImageFolderDataset", "CsvDataset", "ShardDataset",
           "ParquetDataset", "collate_skip_bad", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def _open_rgb(source: str | os.PathLike | bytes, what: str) -> Image.Image:
    """Decode an image file or bytes to RGB, naming ``what`` when it cannot be read."""
    from openmusk.core.images import open_image

    return open_image(source, what)


def _index_labels(raw: Sequence[Any], classes: Sequence[str] | None,
                  label_map: dict | None, where: str) -> tuple[list[int], list[str]]:
    """Turn raw labels (names, ints or strings of ints) into class indices and a class list."""
    if label_map:
        mapped = []
        for i, r in enumerate(raw):
            key = r if r in label_map else str(r)
            if key not in label_map:
                raise ValueError(f"{where}: row {i} label {r!r} is not in label_map "
                                 f"{sorted(map(str, label_map))}")
            mapped.append(label_map[key])
        raw = mapped
    if classes is None:
        uniq = sorted({str(r) for r in raw})
        classes = uniq
    classes = list(classes)
    lookup = {c: j for j, c in enumerate(classes)}
    out = []
    for i, r in enumerate(raw):
        if isinstance(r, numbers.Integral):
            j = int(r)
        elif str(r) in lookup:
            j = lookup[str(r)]
        elif str(r).lstrip("-").isdigit():
            j = int(str(r))
        else:
            raise ValueError(f"{where}: row {i} label {r!r} is not one of the classes {classes}")
        if not 0 <= j < len(classes):
            raise ValueError(f"{where}: row {i} label {r!r} is outside 0..{len(classes) - 1}")
        out.append(j)
    return out, classes


class ImageDataset(torch.utils.data.Dataset):
    """Base class: subclasses fill keys / labels / captions / classes and define ``load_image``."""

    name: str = "dataset"
    keys: list[str]
    labels: list[int] | None = None
    captions: list[str] | None = None
    classes: list[str] | None = None
    transform: Callable[[Image.Image], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def load_image(self, i: int) -> Image.Image:
        """The i-th image as PIL RGB; raises ValueError naming the file when unreadable."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Any, int]:
        try:
            img = self.load_image(i)
        except ValueError:
            return None, i
        return (self.transform(img) if self.transform is not None else img), i

    def check_image(self, i: int) -> str | None:
        """The error message for item ``i`` if its image cannot be read, else None."""
        try:
            self.load_image(i)
        except ValueError as e:
            return str(e)
        return None


def collate_skip_bad(batch: list[tuple[Any, int]]) -> tuple[torch.Tensor | None, torch.Tensor,
                                                            torch.Tensor]:
    """Stack good images; return (images, indices of good items, indices of unreadable items)."""
    good = [(x, i) for x, i in batch if x is not None]
    bad = torch.tensor([i for x, i in batch if x is None], dtype=torch.long)
    if not good:
        return None, torch.empty(0, dtype=torch.long), bad
    return torch.stack([x for x, _ in good]), torch.tensor([i for _, i in good]), bad


class ImageFilesDataset(ImageDataset):
    """Unlabelled images: each input is an image file or a folder searched recursively for images
    (sorted); ``keys`` are the file paths. A missing input or no image at all is an error."""

    def __init__(self, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                 transform: Callable | None = None):
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        paths: list[Path] = []
        for item in map(Path, items):
            if item.is_dir():
                paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            elif item.exists():
                paths.append(item)
            else:
                raise FileNotFoundError(f"no such file or folder: {item}")
        if not paths:
            raise ValueError(f"no images with extensions {IMAGE_EXTENSIONS} in {', '.join(map(str, items))}")
        self.paths = paths
        self.keys = [str(p) for p in paths]
        self.transform = transform
        self.name = "images"

    def load_image(self, i: int) -> Image.Image:
        return _open_rgb(self.paths[i], str(self.paths[i]))


class ImageFolderDataset(ImageDataset):
    """``root/<class>/<image>``: the class of an image is the name of its folder."""

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | None = None,
                 transform: Callable | None = None, label_map: dict | None = None,
                 folder_names: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        folders = list(folder_names) if folder_names else sorted(
            p.name for p in self.root.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"{self.root}: no class sub-folders (expected root/<class>/<image>)")
        paths, raw = [], []
        for f in folders:
            d = self.root / f
            if not d.is_dir():
                raise FileNotFoundError(f"{self.root}: class folder {f!r} is missing")
            for p in sorted(d.rglob("*")):
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(p)
                    raw.append(f)
        if not paths:
            raise ValueError(f"{self.root}: no images with extensions {IMAGE_EXTENSIONS}")
        self.paths = paths
        self.keys = [str(p.relative_to(self.root)) for p in paths]
        self.labels, self.classes = _index_labels(raw, classes or (None if label_map else folders),
                                                  label_map, str(self.root))
        self.transform = transform
        self.name = self.root.name

    def load_image(self, i: int) -> Image.Image:
        return _open_rgb(self.paths[i], str(self.paths[i]))


class CsvDataset(ImageDataset):
    """A CSV/TSV table: an image path column (relative to ``root``), a label and/or caption column.

    ``split_column``/``split`` keep only rows of one split. The separator follows the extension
    (``.tsv`` tab, else comma) unless ``sep`` is given.
    """

    def __init__(self, path: str | os.PathLike, root: str | os.PathLike | None = None,
                 image_column: str = "image", label_column: str | None = "label",
                 caption_column: str | None = None, classes: Sequence[str] | None = None,
                 transform: Callable | None = None, split_column: str | None = None,
                 split: str | None = None, label_map: dict | None = None, sep: str | None = None):
        import pandas as pd

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"table {self.path} does not exist")
        sep = sep or ("\t" if self.path.suffix.lower() in (".tsv", ".tab") else ",")
        try:
            df = pd.read_csv(self.path, sep=sep, dtype=str, keep_default_na=False, index_col=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.path}: not a readable table ({e})") from e
        needed = [c for c in (image_column, label_column, caption_column, split_column) if c]
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise ValueError(f"{self.path}: missing column(s) {missing}; columns are {list(df.columns)}")
        if split_column and split is not None:
            df = df[df[split_column] == split]
            if df.empty:
                raise ValueError(f"{self.path}: no rows with {split_column} == {split!r}")
        self.root = Path(root) if root is not None else self.path.parent
        self.paths = [self.root / p for p in df[image_column]]
        self.keys = list(df[image_column])
        if label_column:
            self.labels, self.classes = _index_labels(list(df[label_column]), classes, label_map,
                                                      str(self.path))
        else:
            self.classes = list(classes) if classes else None
        self.captions = list(df[caption_column]) if caption_column else None
        self.transform = transform
        self.name = self.path.stem

    def load_image(self, i: int) -> Image.Image:
        return _open_rgb(self.paths[i], f"{self.path} row {i} ({self.paths[i]})")


class ShardDataset(ImageDataset):
    """WebDataset tar shards read by random access (members are located once, then seeked).

    ``image_ext`` lists the accepted image extensions in order of preference; the label comes from
    ``label_ext`` (``cls``: an integer or a class name) and the caption from ``caption_ext``.
    """

    def __init__(self, shards: str | os.PathLike | Iterable, classes: Sequence[str] | None = None,
                 transform: Callable | None = None, image_ext: Sequence[str] = ("jpg", "jpeg", "png",
                                                                                 "tif", "webp"),
                 label_ext: str | None = "cls", caption_ext: str | None = "txt",
                 label_map: dict | None = None):
        self.shards = list_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shards found for {shards!r}")
        self.items: list[tuple[Path, int, int]] = []
        self.keys, raw_labels, captions = [], [], []
        for shard in self.shards:
            if not shard.is_file():
                raise FileNotFoundError(f"shard {shard} does not exist")
            for key, members in self._index(shard):
                ext = next((e for e in image_ext if e in members), None)
                if ext is None:
                    raise ValueError(f"{shard}: sample {key!r} has no image ({'/'.join(image_ext)})")
                self.items.append((shard, *members[ext]))
                self.keys.append(key)
                if label_ext:
                    if label_ext not in members:
                        raise ValueError(f"{shard}: sample {key!r} has no .{label_ext} label")
                    raw_labels.append(self._read(shard, *members[label_ext]).decode().strip())
                if caption_ext and caption_ext in members:
                    captions.append(self._read(shard, *members[caption_ext]).decode().strip())
        if label_ext:
            self.labels, self.classes = _index_labels(raw_labels, classes, label_map,
                                                      str(self.shards[0].parent))
        else:
            self.classes = list(classes) if classes else None
        if captions and len(captions) != len(self.keys):
            raise ValueError(f"{self.shards[0].parent}: .{caption_ext} present for only "
                             f"{len(captions)} of {len(self.keys)} samples")
        self.captions = captions or None
        self.transform = transform
        self.name = self.shards[0].parent.name

    @staticmethod
    def _index(shard: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
        """(key, {ext: (data offset, size)}) for every sample of one shard, in order."""
        from openmusk.data.shards import _split_name, unsafe_member_name

        out: list[tuple[str, dict[str, tuple[int, int]]]] = []
        try:
            with tarfile.open(shard, "r:*") as tf:   # offsets are in the uncompressed stream
                for m in tf:
                    if not m.isfile() or unsafe_member_name(m.name):  # never '../x' or '/abs' keys
                        continue
                    key, ext = _split_name(m.name)
                    if not ext:
                        continue
                    if not out or out[-1][0] != key:
                        out.append((key, {}))
                    out[-1][1][ext] = (m.offset_data, m.size)
        except tarfile.TarError as e:
            raise ValueError(f"{shard}: not a readable tar shard ({e})") from e
        return out

    @staticmethod
    def _read(shard: Path, offset: int, size: int) -> bytes:
        import gzip

        compressed = shard.name.endswith((".gz", ".tgz"))   # seekable too, by decompressing up to offset
        with (gzip.open(shard, "rb") if compressed else open(shard, "rb")) as f:
            f.seek(offset)
            return f.read(size)

    def load_image(self, i: int) -> Image.Image:
        shard, offset, size = self.items[i]
        return _open_rgb(self._read(shard, offset, size), f"{shard} sample {self.keys[i]!r}")


class ParquetDataset(ImageDataset):
    """Parquet file(s) with an image column of bytes (``{bytes, path}`` structs as the hub's
    ``Image`` feature stores them, or plain binary) and any other columns.

    ``column(name)`` gives any column as a list (questions, answers, captions...), ``row(i)`` one
    row without the image; the VQA evaluation reads PathVQA this way.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike],
                 image_column: str = "image", label_column: str | None = None,
                 caption_column: str | None = None, classes: Sequence[str] | None = None,
                 transform: Callable | None = None, label_map: dict | None = None,
                 split_column: str | None = None, split: str | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self._expand(paths)
        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(f))
            except (pa.ArrowInvalid, OSError) as e:
                raise ValueError(f"{f}: not a readable parquet file ({e})") from e
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        self.files = files
        where = str(files[0]) if len(files) == 1 else f"{files[0].parent}/*.parquet"
        if image_column not in table.column_names:
            raise ValueError(f"{where}: no image column {image_column!r}; columns are "
                             f"{table.column_names}")
        if split_column and split is not None:
            import pyarrow.compute as pc

            if split_column not in table.column_names:
                raise ValueError(f"{where}: no split column {split_column!r}")
            table = table.filter(pc.equal(table[split_column], split))
        self.table = table
        self.image_column = image_column
        self._images = table[image_column].combine_chunks()
        if pa.types.is_struct(self._images.type):
            if "bytes" not in [f.name for f in self._images.type]:
                raise ValueError(f"{where}: image column {image_column!r} is a struct without "
                                 "'bytes'")
            self._images = self._images.field("bytes")
        elif not (pa.types.is_binary(self._images.type) or pa.types.is_large_binary(self._images.type)):
            raise ValueError(f"{where}: image column {image_column!r} has type {self._images.type}, "
                             "expected binary or struct{bytes, path}")
        self.where = where
        self.keys = [f"{i}" for i in range(table.num_rows)]
        for c in (label_column, caption_column):
            if c and c not in table.column_names:
                raise ValueError(f"{where}: no column {c!r}; columns are {table.column_names}")
        if label_column:
            self.labels, self.classes = _index_labels(self.column(label_column), classes, label_map,
                                                      where)
        else:
            self.classes = list(classes) if classes else None
        self.captions = [str(c) for c in self.column(caption_column)] if caption_column else None
        self.transform = transform
        self.name = files[0].stem

    @staticmethod
    def _expand(paths: str | os.PathLike | Sequence) -> list[Path]:
        """A file, a folder of ``*.parquet``, a glob, or a list of those."""
        if isinstance(paths, (str, os.PathLike)):
            p = Path(paths)
            if p.is_dir():
                files = sorted(p.glob("*.parquet"))
            elif any(c in str(p) for c in "*?["):
                files = sorted(Path(x) for x in __import__("glob").glob(str(p)))
            else:
                files = [p]
        else:
            files = [f for x in paths for f in ParquetDataset._expand(x)]
        if not files:
            raise FileNotFoundError(f"no parquet files found at {paths!r}")
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"parquet file {f} does not exist")
        return files

    def column(self, name: str) -> list:
        """One column as a Python list."""
        if name not in self.table.column_names:
            raise KeyError(f"{self.where}: no column {name!r}; columns are {self.table.column_names}")
        return self.table[name].to_pylist()

    def row(self, i: int) -> dict:
        """Row ``i`` as a dict, without the image bytes."""
        return {c: self.table[c][i].as_py() for c in self.table.column_names if c != self.image_column}

    def image_bytes(self, i: int) -> bytes:
        """The encoded image of row ``i``."""
        b = self._images[i].as_py()
        if b is None:
            raise ValueError(f"{self.where} row {i}: image is missing")
        return b

    def load_image(self, i: int) -> Image.Image:
        return _open_rgb(self.image_bytes(i), f"{self.where} row {i}")
