"""Configuration of each pretraining command: dataclasses whose fields are the YAML keys.

``load_config(StageConfig, "run.yaml")`` reads YAML with ``yaml.safe_load`` and builds the nested
dataclasses, naming any unknown key with its section.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from openmusk.data.augment import AugmentConfig
from openmusk.pretrain.trainer import TrainConfig
from openmusk.pretrain.vqkd import VQKDConfig

__all__ = ["DataConfig", "TokenizerStageConfig", "MaskedStageConfig", "ContrastiveStageConfig",
           "FilterConfig", "ShardsConfig", "from_dict", "load_config"]

T = TypeVar("T")


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed; ``images``/``texts``/``pairs`` take a
    folder, a glob or a brace range of WebDataset shards."""

    images: str | None = None
    texts: str | None = None
    pairs: str | None = None
    global_batch: int = 64
    shuffle_buffer: int = 1000
    num_workers: int = 2
    max_text_len: int = 100
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TokenizerStageConfig:
    """``openmusk pretrain tokenizer``: VQ-KD trained to reconstruct a frozen teacher's patch features."""

    output_dir: str = "runs/vqkd"
    teacher: str = "musk:musk_large_patch16_384"
    teacher_pretrained: str | None = "hf_hub:xiangjx/musk"
    tokenizer: VQKDConfig = field(default_factory=VQKDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, weight_decay=1e-4,
                                                                   betas=(0.9, 0.99)))


@dataclass
class MaskedStageConfig:
    """``openmusk pretrain masked``: stage 1, MIM + MLM on unpaired images and texts."""

    output_dir: str = "runs/stage1"
    model: str | None = "musk_large_patch16_384"   # None: the architecture of ``pretrained``
    model_config: dict[str, Any] = field(default_factory=dict)   # MuskConfig fields to override
    pretrained: str | None = None
    drop_path_rate: float = 0.1
    tokenizer: str = "runs/vqkd/tokenizer.safetensors"
    mask_ratio: float = 0.4
    min_mask_block: int = 16
    text_mask_ratio: float = 0.15
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class ContrastiveStageConfig:
    """``openmusk pretrain contrastive``: stage 2, CLIP + auxiliary MLM decoder on image-text pairs."""

    output_dir: str = "runs/stage2"
    model: str | None = "musk_large_patch16_384"   # None: the architecture of ``pretrained``
    model_config: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = "runs/stage1/model.safetensors"
    drop_path_rate: float = 0.1
    decoder_depth: int = 2
    mlm_weight: float = 1.0
    text_mask_ratio: float = 0.3
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))


@dataclass
class FilterConfig:
    """``openmusk pretrain filter``: score pairs with a trained model, keep the most similar ones."""

    pairs: str = "shards/pairs"
    output: str = "shards/pairs-filtered/pairs-%06d.tar"
    pretrained: str = "runs/stage2/model.safetensors"
    model: str | None = None
    drop_fraction: float = 0.1
    batch_size: int = 64
    max_text_len: int = 100
    maxcount: int = 10000
    device: str = "auto"


@dataclass
class ShardsConfig:
    """``openmusk pretrain make-shards``: a folder / CSV / text file / slides -> WebDataset shards."""

    source: str = "images/"
    output: str = "shards/images-%06d.tar"
    kind: str = "images"           # images | texts | pairs | slides
    maxcount: int = 10000
    image_column: str = "image"
    text_column: str = "text"
    max_side: int | None = 1024
    # kind: slides -- random tissue fields of view at these µm/px (x10, x20, x40)
    fields_per_slide: int = 100
    fov_size: int = 384
    fov_mpps: tuple[float, ...] = (1.0, 0.5, 0.25)
    min_tissue: float = 0.5
    seed: int = 0


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or 'config'}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{where}.{name}" if where else name)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where or cls.__name__}: {e}") from e


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Read a YAML file into ``cls``, naming the file in every error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
        return from_dict(cls, data)
    except (yaml.YAMLError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
