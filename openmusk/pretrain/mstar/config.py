"""Configs of the two mSTAR stages: dataclasses whose fields are the YAML keys, one to one."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

__all__ = ["AggregatorPretrainConfig", "SelfTaughtConfig", "load_config"]

C = TypeVar("C")


@dataclass
class AggregatorPretrainConfig:
    """Stage 1: slide aggregator aligned with reports and RNA-seq by tri-modal CLIP losses."""

    table: str                      # patient CSV: case_id, features, report[, split]
    out_dir: str                    # where the aggregator, projections and logs go
    rna_table: str = ""             # CSV: case_id, one column per gene ("" = no RNA modality)
    aggregator: str = "transmil"    # "transmil" (mSTAR) or "abmil"
    hidden_dim: int = 512           # aggregator width (= slide embedding before projection)
    embed_dim: int = 256            # shared slide / report / RNA space
    musk_model: str = "musk_large_patch16_384"  # architecture of the report encoder
    weights: str = "hf_hub:xiangjx/musk"        # its weights ("" = random, for tests)
    text_mode: str = "frozen"       # "frozen": cached report embeddings; "tuned": MUSK's language side trains
    text_lr: float = 1e-5           # learning rate of MUSK's language side when tuned
    report_max_len: int = 100       # tokens per report chunk (long reports are averaged over chunks)
    n_genes: int = 2000             # most variable genes kept after log1p
    rna_hidden: list[int] = field(default_factory=lambda: [256, 256])
    max_patches: int = 4096         # random patches per slide per step (memory bound); 0 = all
    batch_size: int = 32
    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    val_fraction: float = 0.2       # patients without a split column held out for retrieval checks
    seed: int = 0
    device: str = "cpu"
    amp: bool = False               # bfloat16 autocast (CUDA or CPU)
    resume: bool = True             # continue from out_dir/resume.pt when present


@dataclass
class SelfTaughtConfig:
    """Stage 2: the patch encoder learns to reproduce the frozen aggregator's re-embedded patch tokens."""

    stage1_dir: str                 # output of stage 1
    table: str                      # CSV: case_id, slide (WSI or image file), features (HDF5 with coords)
    out_dir: str
    musk_model: str = "musk_large_patch16_384"  # patch encoder architecture
    weights: str = "hf_hub:xiangjx/musk"        # its starting weights ("" = random, for tests)
    multiscale: bool = True         # patch features = MUSK multiscale (2D), as `openmusk slide extract` writes
    img_size: int = 384             # encoder input size (tiles are resized to it)
    patches_per_slide: int = 16     # tiles sampled per slide per step (memory bound)
    context_patches: int = 2048     # cached features of other patches given to the aggregator as context
    slides_per_step: int = 2
    steps: int = 1000
    lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    ema_momentum: float = 0.996     # EMA teacher: teacher = m * teacher + (1 - m) * student
    loss: str = "cosine"            # "cosine" or "smooth_l1" between student and aggregator tokens
    grad_checkpointing: bool = True
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    log_every: int = 10
    save_every: int = 200           # steps between resumable checkpoints
    resume: bool = True


def load_config(cls: type[C], path: str | os.PathLike, **overrides) -> C:
    """Read YAML into ``cls`` (paths relative to the file); unknown or missing keys are errors naming the file and key."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read config ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    base = path.parent
    for key in ("table", "rna_table", "out_dir", "stage1_dir"):  # paths in the file are relative to it
        if data.get(key) and not os.path.isabs(str(data[key])):
            data[key] = str(base / str(data[key]))
    data.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing} for {cls.__name__}")
    return cls(**data)
