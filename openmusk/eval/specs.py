"""Dataset specs: class names, prompt templates, splits and file layout of a benchmark dataset.

The paper's datasets ship as YAML files in ``openmusk/eval/registry/`` (``get_dataset_spec("pcam")``);
a user describes a new one in a YAML file with the same keys (``load_dataset_spec("my.yaml")``).
Both are read by :func:`openmusk.core.config.load_config`. A spec's ``path`` and ``splits`` are
relative to the dataset's root folder: the run config's ``root``, else the spec's own ``root``
(which, like every path in a config file, is relative to the spec file).
:func:`build_dataset` turns a spec + a root folder + a split into a dataset from
:mod:`openmusk.data.datasets`, or, for ``format: published``, from the reader of
:mod:`openmusk.eval.datasets` named by ``reader`` that reads the files as their owners publish
them (``splits`` then maps the run's split names to the reader's).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from openmusk.core.config import load_config, path_field

__all__ = ["DatasetSpec", "get_dataset_spec", "list_dataset_specs", "load_dataset_spec",
           "build_dataset", "REGISTRY_DIR", "FORMATS", "TASKS", "PROTOCOLS", "PAPER_PROTOCOL",
           "normalize_protocol"]

REGISTRY_DIR = Path(__file__).with_name("registry")
FORMATS = ("folder", "csv", "shards", "parquet", "published")
TASKS = ("zeroshot", "retrieval", "image_retrieval", "linear_probe", "few_shot", "knn")
PAPER_PROTOCOL = "musk-paper"
PROTOCOLS = ("clip-benchmark", PAPER_PROTOCOL)
_OTHER_PROTOCOL_SPELLINGS = {"default": "clip-benchmark", "clip_benchmark": "clip-benchmark",
                             "musk_paper": PAPER_PROTOCOL, "paper": PAPER_PROTOCOL}


def normalize_protocol(name: str | None, where: str = "protocol") -> str | None:
    """A protocol name in its current spelling (other spellings accepted with a notice):
    ``musk-paper`` (the authors' code, :mod:`openmusk.eval.paper`) or ``clip-benchmark``."""
    if name is None:
        return None
    from openmusk.core.config import notice

    key = str(name).strip().lower()
    if key in _OTHER_PROTOCOL_SPELLINGS:
        notice(f"{where}: {name!r} is now spelled {_OTHER_PROTOCOL_SPELLINGS[key]!r}")
        key = _OTHER_PROTOCOL_SPELLINGS[key]
    if key not in PROTOCOLS:
        raise ValueError(f"{where} must be one of {PROTOCOLS}, got {name!r}")
    return key


@dataclass
class DatasetSpec:
    """How to read one benchmark dataset and talk about its classes; fields are the YAML keys."""

    name: str
    format: str = "folder"
    classes: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: ["{c}"])
    label_map: dict[str, int] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    path: str = ""                          # relative to the dataset root
    root: Optional[str] = path_field(None)  # the dataset root when the run config gives none
    split_column: Optional[str] = None
    image_column: str = "image"
    label_column: Optional[str] = "label"
    caption_column: Optional[str] = None
    tasks: list[str] = field(default_factory=list)
    reader: Optional[str] = None            # format published: a reader of openmusk.eval.datasets
    reader_options: dict = field(default_factory=dict)
    protocol: str = "clip-benchmark"        # the default protocol of this dataset (musk-paper, ...)
    retrieval_splits: Optional[list[str]] = None   # image retrieval gallery (None: the test split)
    description: str = ""
    reference: str = ""

    def __post_init__(self) -> None:
        where = f"dataset spec {self.name!r}"
        if self.format not in FORMATS:
            raise ValueError(f"{where}: format {self.format!r} is not one of {FORMATS}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"{where}: unknown task(s) {bad}; known: {TASKS}")
        if any("{c}" not in t for t in self.templates):
            raise ValueError(f"{where}: every template needs a '{{c}}' placeholder: {self.templates}")
        out_of_range = {k: v for k, v in self.label_map.items()
                        if self.classes and not 0 <= int(v) < len(self.classes)}
        if out_of_range:
            raise ValueError(f"{where}: label_map values {out_of_range} are outside the "
                             f"{len(self.classes)} classes")
        self.label_map = {str(k): int(v) for k, v in self.label_map.items()}
        self.protocol = normalize_protocol(self.protocol, f"{where} protocol")
        if self.format == "published":
            from openmusk.eval.datasets import READERS

            if self.reader not in READERS:
                raise ValueError(f"{where}: format published needs reader: one of {sorted(READERS)}, "
                                 f"got {self.reader!r}")


def load_dataset_spec(path: str | os.PathLike) -> DatasetSpec:
    """Read a spec from a YAML file (unknown keys and wrong types are named with the file)."""
    return load_config(DatasetSpec, path)


def list_dataset_specs() -> list[str]:
    """Names of the built-in specs."""
    return sorted(p.stem for p in REGISTRY_DIR.glob("*.yaml"))


def get_dataset_spec(name_or_path: str | os.PathLike) -> DatasetSpec:
    """A built-in spec by name, or a user spec from a ``.yaml`` path."""
    s = os.fspath(name_or_path)
    if s.endswith((".yaml", ".yml")):
        return load_dataset_spec(s)
    p = REGISTRY_DIR / f"{s}.yaml"
    if not p.is_file():
        raise KeyError(f"no dataset spec named {s!r}; built-in: {', '.join(list_dataset_specs())} "
                       "(or give a path to your own .yaml)")
    return load_dataset_spec(p)


def build_dataset(spec: DatasetSpec, root: str | os.PathLike | None = None, split: str | None = None,
                  transform: Callable | None = None):
    """Open ``spec``'s data under ``root`` (default: the spec's own) for one split (or the whole
    set when ``split`` is None)."""
    from openmusk.data import datasets as D

    if root is None and spec.root is None:
        raise ValueError(f"dataset spec {spec.name!r}: where is its data? give root: in the run config "
                         "(or in the spec)")
    root = Path(root if root is not None else spec.root)
    if spec.format == "published":
        from openmusk.eval.datasets import READERS

        if split is not None and split not in spec.splits:
            raise ValueError(f"dataset spec {spec.name!r} has no split {split!r}; splits: {sorted(spec.splits)}")
        ds = READERS[spec.reader](root, spec.splits[split] if split is not None else None,
                                  **spec.reader_options)
        ds.transform, ds.name = transform, spec.name
        if spec.classes and ds.classes is not None:
            if len(ds.classes) != len(spec.classes):
                raise ValueError(f"dataset spec {spec.name!r}: {len(spec.classes)} classes but its reader "
                                 f"{spec.reader!r} gives {len(ds.classes)}: {ds.classes}")
            ds.classes = list(spec.classes)  # the spec's (prompt) names for the reader's indices
        return ds
    if split is not None and split in spec.splits:
        location, split_filter = root / spec.splits[split], None
    elif split is not None and spec.split_column:
        location, split_filter = root / spec.path, split
    elif split is None or (not spec.splits and not spec.split_column):
        location, split_filter = root / spec.path, None
    else:
        raise ValueError(f"dataset spec {spec.name!r} has no split {split!r}; splits: "
                         f"{sorted(spec.splits) or '(by column ' + str(spec.split_column) + ')'}")
    classes = spec.classes or None
    lm = spec.label_map or None
    if spec.format == "folder":
        ds = D.ImageFolderDataset(location, classes=classes, transform=transform, label_map=lm)
    elif spec.format == "csv":
        ds = D.CsvDataset(location, root=root, image_column=spec.image_column,
                          label_column=spec.label_column, caption_column=spec.caption_column,
                          classes=classes, transform=transform, split_column=spec.split_column,
                          split=split_filter, label_map=lm)
    elif spec.format == "shards":
        ds = D.ShardDataset(location, classes=classes, transform=transform,
                            label_ext="cls" if spec.label_column else None,
                            caption_ext="txt" if spec.caption_column else None, label_map=lm)
    else:
        ds = D.ParquetDataset(location, image_column=spec.image_column,
                              label_column=spec.label_column, caption_column=spec.caption_column,
                              classes=classes, transform=transform, label_map=lm,
                              split_column=spec.split_column, split=split_filter)
    ds.name = spec.name
    return ds
