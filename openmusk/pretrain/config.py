"""Configuration of each pretraining command: dataclasses whose fields are the YAML keys.

Files are read by the one openmusk loader (:func:`openmusk.core.config.load_config`): unknown keys
are named with the closest valid one, values are type-checked, and relative paths (shards,
outputs, weights, the tokenizer) resolve against the YAML file's folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from openmusk.core.config import path_field
from openmusk.core.runtime import normalize_precision
from openmusk.data.augment import AugmentConfig
from openmusk.pretrain.trainer import TrainConfig
from openmusk.pretrain.vqkd import VQKDConfig

__all__ = ["DataConfig", "TokenizerStageConfig", "MaskedStageConfig", "ContrastiveStageConfig",
           "FilterConfig", "ShardsConfig"]


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed; ``images``/``texts``/``pairs`` take a
    folder, a glob or a brace range of WebDataset shards."""

    images: str | None = path_field(None)
    texts: str | None = path_field(None)
    pairs: str | None = path_field(None)
    global_batch: int = 64
    shuffle_buffer: int = 1000
    num_workers: int = 2
    max_text_len: int = 100
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TokenizerStageConfig:
    """``openmusk pretrain tokenizer``: VQ-KD trained to reconstruct a frozen teacher's patch features."""

    output_dir: str = path_field("runs/vqkd")
    # an encoder (openmusk.encoders): musk:<config> (MUSK, weights from teacher_pretrained),
    # timm:<model> (its pretrained weights), a registry name or module:function with teacher_args
    teacher: str = "musk:musk_large_patch16_384"
    teacher_pretrained: str | None = path_field("hf_hub:xiangjx/musk")   # MUSK teachers; null: random
    teacher_args: dict[str, Any] = field(default_factory=dict)           # more arguments of its factory
    tokenizer: VQKDConfig = field(default_factory=VQKDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, weight_decay=1e-4,
                                                                   betas=(0.9, 0.99)))


@dataclass
class MaskedStageConfig:
    """``openmusk pretrain masked``: stage 1, MIM + MLM on unpaired images and texts."""

    output_dir: str = path_field("runs/stage1")
    model: str | None = "musk_large_patch16_384"   # None: the architecture of ``pretrained``
    model_config: dict[str, Any] = field(default_factory=dict)   # MuskConfig fields to override
    pretrained: str | None = path_field(None)
    drop_path_rate: float = 0.1
    tokenizer: str = path_field("runs/vqkd/tokenizer.safetensors")
    mask_ratio: float = 0.4
    min_mask_block: int = 16
    text_mask_ratio: float = 0.15
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class ContrastiveStageConfig:
    """``openmusk pretrain contrastive``: stage 2, CLIP + auxiliary MLM decoder on image-text pairs."""

    output_dir: str = path_field("runs/stage2")
    model: str | None = "musk_large_patch16_384"   # None: the architecture of ``pretrained``
    model_config: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = path_field("runs/stage1/model.safetensors")
    drop_path_rate: float = 0.1
    decoder_depth: int = 2
    mlm_weight: float = 1.0
    text_mask_ratio: float = 0.3
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))


@dataclass
class FilterConfig:
    """``openmusk pretrain filter``: score pairs with a trained model, keep the most similar ones."""

    pairs: str = path_field("shards/pairs")
    output: str = path_field("shards/pairs-filtered/pairs-%06d.tar")
    pretrained: str = path_field("runs/stage2/model.safetensors")
    model: str | None = None
    drop_fraction: float = 0.1
    batch_size: int = 64
    max_text_len: int = 100
    maxcount: int = 10000
    device: str = "auto"           # auto | cpu | cuda | cuda:N (openmusk.core.runtime)
    precision: str = "auto"        # auto | fp32 | bf16 | fp16 autocast while scoring

    def __post_init__(self) -> None:
        if not 0 <= self.drop_fraction < 1:
            raise ValueError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        self.precision = normalize_precision(self.precision)


@dataclass
class ShardsConfig:
    """``openmusk pretrain make-shards``: a folder / CSV / text file / slides -> WebDataset shards."""

    source: str = path_field("images/")
    output: str = path_field("shards/images-%06d.tar")
    kind: Literal["images", "texts", "pairs", "slides"] = "images"
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

