"""Configuration of each pretraining command: dataclasses whose fields are the YAML keys.

Files are read by the one openmusk loader (:func:`openmusk.core.config.load_config`): unknown keys
are named with the closest valid one, values are type-checked, and relative paths (shards,
outputs, weights, the tokenizer) resolve against the YAML file's folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from openmusk.core.config import check_minimums, path_field
from openmusk.core.runtime import normalize_precision
from openmusk.data.augment import AugmentConfig
from openmusk.pretrain.trainer import TrainConfig
from openmusk.pretrain.vqkd import VQKDConfig

__all__ = ["DataConfig", "TokenizerStageConfig", "MaskedStageConfig", "ContrastiveStageConfig",
           "FilterConfig", "ShardsConfig"]


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed; ``images``/``texts``/``pairs`` take a
    folder, a glob or a brace range of WebDataset shards. ``split``: ``samples`` (every rank reads
    every shard and takes its slice of each global batch; results do not depend on the number of
    ranks) or ``shards`` (each rank reads only its own shards, for very large corpora); the data
    order of both is described in :mod:`openmusk.pretrain.stream`."""

    images: str | None = path_field(None)
    texts: str | None = path_field(None)
    pairs: str | None = path_field(None)
    global_batch: int = 64
    shuffle_buffer: int = 1000
    num_workers: int = 2
    max_text_len: int = 100
    split: Literal["samples", "shards"] = "samples"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check_minimums(self, global_batch=1, shuffle_buffer=0, num_workers=0, max_text_len=1)


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


def _stage1_train() -> TrainConfig:
    """The authors' stage-1 optimiser (1_mask_pretrain/configs/pretrain_musk_large.yaml): AdamW
    (0.9, 0.999), lr 1e-4 warmed up from 1e-6, cosine to 1e-5, clipping 1.0, weight decay 0.05.
    The paper's text: (0.9, 0.95), lr 1.5e-3, 10k warm-up steps (preset musk-large-stage1-paper)."""
    return TrainConfig(lr=1e-4, betas=(0.9, 0.999), warmup_lr_ratio=0.01, min_lr_ratio=0.1, clip_grad=1.0,
                       weight_decay=0.05)


def _stage2_train() -> TrainConfig:
    """The authors' stage-2 optimiser (2_contrastive_pretrain/scripts/train.sh, run.py): AdamW
    (0.9, 0.95), lr 1e-4 warmed up from 1e-6, cosine to 1e-6, layer decay 0.85, no clipping."""
    return TrainConfig(lr=1e-4, betas=(0.9, 0.95), warmup_lr_ratio=0.01, min_lr_ratio=0.01, clip_grad=None,
                       weight_decay=0.05, layer_decay=0.85)


@dataclass
class MaskedStageConfig:
    """``openmusk pretrain masked``: stage 1, MIM + MLM on unpaired images and texts.

    Defaults follow the authors' code: 230 of 576 patches (``mask_ratio`` 0.4 of the grid) in
    blocks of ``min_mask_block``..``max_mask_block`` patches; each text position selected with
    probability ``text_mask_ratio`` and extended to whole words (``whole_word_mask``: ``authors``
    counts word spans from position 0 as their code does, ``aligned`` from the first piece,
    ``none``); ``mlm_targets``: ``mask`` scores only positions that became ``<mask>`` (their code),
    ``selected`` every selected one (BERT).
    """

    output_dir: str = path_field("runs/stage1")
    model: str | None = "musk_large_patch16_384"   # None: the architecture of ``pretrained``
    model_config: dict[str, Any] = field(default_factory=dict)   # MuskConfig fields to override
    pretrained: str | None = path_field(None)
    drop_path_rate: float = 0.1
    tokenizer: str = path_field("runs/vqkd/tokenizer.safetensors")
    mask_ratio: float = 0.4
    min_mask_block: int = 16
    max_mask_block: int | None = 100
    text_mask_ratio: float = 0.15
    whole_word_mask: Literal["authors", "aligned", "none"] = "authors"
    mlm_targets: Literal["mask", "selected"] = "mask"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_stage1_train)


@dataclass
class ContrastiveStageConfig:
    """``openmusk pretrain contrastive``: stage 2, CLIP + auxiliary MLM decoder on image-text pairs.

    Defaults follow the authors' code: 15% of caption positions masked (the paper's text says 30%),
    no whole-word extension, the CLIP text embedding from the masked caption (``clip_text``:
    ``clean`` for the clean one), a 4-block, 16-head decoder, MLM weight 0.1, the logit scale never
    clamped (``max_logit_scale``: 4.6052 for CLIP's ln 100), captions of at most 64 ids whose first
    and last pieces are dropped (``trim_caption``; their ``tokens[1:-1]``).
    """

    output_dir: str = path_field("runs/stage2")
    model: str | None = "musk_large_patch16_384"   # None: the architecture of ``pretrained``
    model_config: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = path_field("runs/stage1/model.safetensors")
    drop_path_rate: float = 0.2     # train.sh --drop_path 0.2 (the paper: 0.1)
    decoder_depth: int = 4
    decoder_heads: int = 16
    mlm_weight: float = 0.1
    text_mask_ratio: float = 0.15
    mlm_targets: Literal["mask", "selected"] = "mask"
    clip_text: Literal["masked", "clean"] = "masked"
    max_logit_scale: float | None = None
    trim_caption: bool = True
    data: DataConfig = field(default_factory=lambda: DataConfig(max_text_len=64))
    train: TrainConfig = field(default_factory=_stage2_train)


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
    text_window: int = 98          # kind: texts -- longer texts become consecutive windows (0: whole)
    # kind: slides -- random tissue fields of view at these µm/px (x10, x20, x40)
    fields_per_slide: int = 100
    fov_size: int = 384
    fov_mpps: tuple[float, ...] = (1.0, 0.5, 0.25)
    min_tissue: float = 0.5
    seed: int = 0

