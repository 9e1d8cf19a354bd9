"""The slide-level experiment configuration: one dataclass whose fields are the YAML keys.

Read it with the one config loader, :func:`openmusk.core.config.load_config`; relative paths in
the file resolve against its folder. Defaults reproduce the MUSK paper's slide-level recipe: gated
ABMIL (FC 512, attention 384, dropout 0.25), AdamW, cosine schedule, LR 1e-3, 100 epochs, early
stopping after 10 epochs without improvement, class-balanced sampling, 5-fold stratified
cross-validation.

>>> from openmusk.core.config import load_config
>>> config = load_config(MilConfig, "her2.yaml", overrides={"epochs": 20})
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from openmusk.core.config import check_minimums, path_field
from openmusk.core.runtime import normalize_precision
from openmusk.text.report import REPORT_MODES
from openmusk.text.summarize import SummaryConfig

__all__ = ["MilConfig"]


@dataclass
class MilConfig:
    """Everything one `openmusk mil train` run needs; relative paths resolve against the YAML file."""

    cohort: str = path_field("")        # CSV: one row per slide or per patient
    features_dir: str = path_field("")  # <features_dir>/<slide_id>.h5 with `features` (N,D), `coords` (N,2)
    output_dir: str = path_field("mil_results")
    task: Literal["classification", "survival"] = "classification"
    modality: Literal["image", "text", "both"] = "image"
    model: Literal["abmil", "transmil", "meanpool", "mcat", "porpoise", "motcat", "cmta"] = "abmil"  # last 4: genomic survival
    loss: str = ""                      # ce (classification); nll | cox (survival); "" = ce / nll
    patient_column: str = "patient_id"
    slide_column: str = "slide_id"      # several slides: several rows, or ids joined by ';'
    label_column: str = "label"
    time_column: str = "time"
    event_column: str = "event"
    report_column: str = "report"
    covariates: list[str] = field(default_factory=list)  # clinical columns for the Cox regression
    n_bins: int = 4                     # discrete-time survival intervals (quantiles of event times)
    nll_alpha: float = 0.0              # extra weight on uncensored patients in the NLL (MCAT)
    hidden_dim: int = 512
    attention_dim: int = 384
    dropout: float = 0.25
    fusion_hidden: int = 256
    init_aggregator: Optional[str] = path_field(None)  # safetensors with pretrained aggregator weights
    genomics: Optional[str] = path_field(None)    # mcat|porpoise|motcat|cmta: CSV, patient column + one column per gene
    signatures: Optional[str] = path_field(None)  # gene groups, MCAT's signatures.csv layout (a column of genes per group)
    report_model: str = "musk_large_patch16_384"
    report_weights: Optional[str] = path_field("hf_hub:xiangjx/musk")  # None: the named model's random init
    report_cache: Optional[str] = path_field(None)     # HDF5 of report embeddings; default <output_dir>/...
    report_mode: str = "raw-windows"    # raw-windows | summary | summary+windows (openmusk.text.report)
    report_max_windows: Optional[int] = None  # raw windows kept per report (1 = 100-token truncation)
    report_template: Optional[str] = path_field(None)  # render the report from cohort columns (mil/clinical_text.py)
    summary: SummaryConfig = field(default_factory=SummaryConfig)  # how summaries are made / cached
    subgroups: list[str] = field(default_factory=list)  # cohort columns: KM + HR within each group
    baselines: list[str] = field(default_factory=list)  # cohort columns: clinical-only models, same folds
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    batch_size: int = 1                 # bags per step; Cox needs >= 2 (the loss compares patients)
    patience: int = 10                  # early stopping: epochs without validation improvement
    min_epochs: int = 0                 # never stop before; ties in the validation score keep the later epoch
    balanced_sampler: bool = True
    max_instances: Optional[int] = None  # random subset of instances per bag while training
    folds: int = 5
    val_fraction: float = 0.2           # of each training split, held out for early stopping
    seed: int = 0
    precision: str = "auto"             # auto | fp32 | bf16 | fp16 (autocast; auto = bf16 on GPU, fp32 on CPU)
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    bootstrap: int = 1000
    slides_dir: Optional[str] = path_field(None)  # slide images, for heatmaps and top-tile grids
    slide_extension: str = ".svs"
    slide_mpp: Optional[float] = None   # microns per pixel for slide images that do not state it
    top_tiles: int = 16
    tile_size: Optional[int] = None     # level-0 tile size; default from the HDF5 `coords` attrs

    def __post_init__(self) -> None:
        """Check choices early so a typo fails before hours of training (also when built in Python)."""
        choices = {"task": ("classification", "survival"), "modality": ("image", "text", "both"),
                   "model": ("abmil", "transmil", "meanpool", "mcat", "porpoise", "motcat", "cmta")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name!r} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}")
        self.precision = normalize_precision(self.precision)
        if not self.loss:
            self.loss = "ce" if self.task == "classification" else "nll"
        valid_loss = ("ce",) if self.task == "classification" else ("nll", "cox")
        if self.loss not in valid_loss:
            raise ValueError(f"loss {self.loss!r} does not fit task {self.task!r}; use {valid_loss}")
        if self.loss == "cox" and self.batch_size < 2:
            raise ValueError("the Cox loss compares patients within a batch: set batch_size >= 2")
        if self.report_mode not in REPORT_MODES:
            raise ValueError(f"config field 'report_mode' must be one of {REPORT_MODES}, got {self.report_mode!r}")
        if self.model in ("mcat", "porpoise", "motcat", "cmta"):
            if self.task != "survival" or self.loss != "nll" or self.modality != "image" or not self.genomics:
                raise ValueError(f"model {self.model!r} is genomic survival: set task survival, loss nll, "
                                 f"modality image and a genomics table")
            if self.model != "porpoise" and not self.signatures:
                raise ValueError(f"model {self.model!r} embeds gene groups: set signatures (MCAT's signatures.csv layout)")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        check_minimums(self, epochs=1, batch_size=1, patience=0, min_epochs=0, bootstrap=0, top_tiles=0,
                       lr=0.0, val_fraction=0.0)
        if self.val_fraction >= 1:
            raise ValueError(f"key 'val_fraction' must be < 1, got {self.val_fraction!r}")

    def to_dict(self) -> dict:
        """Plain dict, the YAML layout."""
        return asdict(self)
