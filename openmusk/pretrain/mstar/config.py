"""Configs of the two mSTAR stages: dataclasses whose fields are the YAML keys, one to one.

Read them with the one config loader, :func:`openmusk.core.config.load_config`; relative paths
in the file resolve against its folder. Old spellings are accepted with a notice: ``out_dir`` is
now ``output_dir``, ``musk_model`` is ``arch``, ``amp: true|false`` is ``precision: bf16|fp32``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from openmusk.core.config import path_field
from openmusk.core.runtime import normalize_precision

__all__ = ["AggregatorPretrainConfig", "SelfTaughtConfig", "SlidePromptConfig"]


def _amp_to_precision(value: object) -> str:
    """The old ``amp`` switch as a precision: true -> bf16, false -> fp32."""
    if isinstance(value, str):
        value = value.strip().lower() in ("true", "yes", "on", "1")
    return "bf16" if value else "fp32"


_RENAMED = {"out_dir": "output_dir", "musk_model": "arch", "amp": ("precision", _amp_to_precision)}


@dataclass
class AggregatorPretrainConfig:
    """Stage 1: slide aggregator aligned with reports and RNA-seq by tri-modal CLIP losses."""

    renamed_keys: ClassVar[dict] = _RENAMED

    table: str = path_field()       # patient CSV: case_id, features, report[, split]
    output_dir: str = path_field("mstar_stage1")  # where the aggregator, projections and logs go
    rna_table: str = path_field("")  # CSV: case_id, one column per gene ("" = no RNA modality)
    aggregator: Literal["transmil", "abmil", "meanpool"] = "transmil"  # "transmil" is mSTAR's
    hidden_dim: int = 512           # aggregator width (= slide embedding before projection)
    embed_dim: int = 256            # shared slide / report / RNA space
    arch: str = "musk_large_patch16_384"         # architecture of the report encoder (MUSK)
    weights: str = path_field("hf_hub:xiangjx/musk")  # its weights ("" or "random" = random init, for tests)
    text_mode: Literal["frozen", "tuned"] = "frozen"  # frozen: cached report embeddings; tuned: MUSK's language side trains
    text_lr: float = 1e-5           # learning rate of MUSK's language side when tuned
    report_max_len: int = 100       # tokens per report window (long reports: openmusk.text.report_embeddings)
    n_genes: int = 2000             # most variable genes kept after log1p
    rna_hidden: list[int] = field(default_factory=lambda: [256, 256])
    max_patches: int = 4096         # random patches per slide per step (memory bound); 0 = all
    dropout: Optional[float] = None  # dropout of the aggregator (ABMIL / mean pooling) and RNA encoder; None = their defaults
    batch_size: int = 32            # global: under torchrun each rank embeds its share, CLIP features are gathered
    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    val_fraction: float = 0.2       # patients without a split column held out for retrieval checks
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    precision: str = "auto"         # auto | fp32 | bf16 | fp16 autocast (auto: bf16 on GPU, fp32 on CPU)
    resume: bool = True             # continue from output_dir/resume.pt when present

    def __post_init__(self) -> None:
        """One spelling of the precision; a choice typo fails before any training."""
        self.precision = normalize_precision(self.precision)
        if self.text_mode not in ("frozen", "tuned"):
            raise ValueError(f"text_mode must be 'frozen' or 'tuned', got {self.text_mode!r}")


@dataclass
class SelfTaughtConfig:
    """Stage 2: the patch encoder learns to reproduce the frozen aggregator's re-embedded patch tokens."""

    renamed_keys: ClassVar[dict] = _RENAMED

    stage1_dir: str = path_field()  # output of stage 1
    table: str = path_field()       # CSV: case_id, slide (WSI or image file), features (HDF5 with coords)
    output_dir: str = path_field("mstar_stage2")
    arch: str = "musk_large_patch16_384"         # patch encoder architecture (MUSK)
    weights: str = path_field("hf_hub:xiangjx/musk")  # its starting weights ("" or "random" = random, for tests)
    multiscale: bool = True         # patch features = MUSK multiscale (2D), as `openmusk slide extract` writes
    img_size: int = 384             # encoder input size (tiles are resized to it)
    patches_per_slide: int = 16     # tiles sampled per slide per step (memory bound)
    context_patches: int = 2048     # cached features of other patches given to the aggregator as context
    slides_per_step: int = 2         # global: under torchrun each rank takes its share of them
    steps: int = 1000
    lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    ema_momentum: float = 0.996     # EMA teacher: teacher = m * teacher + (1 - m) * student
    loss: Literal["cosine", "smooth_l1"] = "cosine"  # distance between student and aggregator tokens
    grad_checkpointing: bool = True
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    precision: str = "auto"         # auto | fp32 | bf16 | fp16 autocast
    log_every: int = 10
    save_every: int = 200           # steps between resumable checkpoints
    resume: bool = True

    def __post_init__(self) -> None:
        """One spelling of the precision."""
        self.precision = normalize_precision(self.precision)


@dataclass
class SlidePromptConfig:
    """Slide zero-shot (top-j pooling, or the stage-1 aggregator) and few-shot (text-guided prototypes,
    or probes on aggregator embeddings) from tile features files."""

    table: str = path_field()       # CSV: slide_id, features (HDF5 path, relative to the CSV), label
    prompts: str = path_field()     # prompt file: {templates, classnames} or {class: [prompts]}
    output_dir: str = path_field("mstar_slide_prompts")
    method: Literal["topj", "aggregator"] = "topj"  # zero-shot: tile scores + top-j, or stage-1 slide embedding
    few_shot_method: Literal["text_prototype", "linear", "prototype"] = "text_prototype"
    encoder: str = "musk"           # text side for top-j / text prototypes (tiles: its 'embed' features)
    weights: str = path_field("hf_hub:xiangjx/musk")  # the encoder's weights
    stage1_dir: str = path_field("")  # stage-1 output, for method aggregator / few_shot_method linear|prototype
    topj: list[int] = field(default_factory=lambda: [1, 5, 10, 50, 100])
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    few_shot_topj: int = 10         # tiles pooled per class by the text-guided prototypes
    prior: float = 1.0              # weight of the prompt embedding in a prototype, in shots
    seeds: int = 5                  # random draws of the k shots
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        """Choices and sizes checked before any slide is read."""
        self.precision = normalize_precision(self.precision)
        if self.method not in ("topj", "aggregator"):
            raise ValueError(f"method must be 'topj' or 'aggregator', got {self.method!r}")
        if self.few_shot_method not in ("text_prototype", "linear", "prototype"):
            raise ValueError(f"few_shot_method must be text_prototype | linear | prototype, got {self.few_shot_method!r}")
        if not self.topj or min(self.topj) < 1 or not self.shots or min(self.shots) < 1 or self.seeds < 1:
            raise ValueError("topj, shots and seeds must be positive")
