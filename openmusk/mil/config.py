"""The slide-level experiment configuration: one dataclass whose fields are the YAML keys.

Defaults reproduce the MUSK paper's slide-level recipe: gated ABMIL (FC 512, attention 384,
dropout 0.25), AdamW, cosine schedule, LR 1e-3, 100 epochs, early stopping after 10 epochs
without improvement, class-balanced sampling, 5-fold stratified cross-validation.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["MilConfig", "load_config"]


@dataclass
class MilConfig:
    """Everything one `openmusk mil train` run needs; relative paths resolve against the YAML file."""

    cohort: str = ""                    # CSV: one row per slide or per patient
    features_dir: str = ""              # <features_dir>/<slide_id>.h5 with `features` (N,D), `coords` (N,2)
    output_dir: str = "mil_results"
    task: str = "classification"        # classification | survival
    modality: str = "image"             # image | text | both
    model: str = "abmil"                # abmil | transmil | meanpool
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
    init_aggregator: str | None = None  # safetensors with pretrained aggregator weights
    report_model: str = "musk_large_patch16_384"
    report_weights: str | None = "hf_hub:xiangjx/musk"  # None: the named model's random init
    report_cache: str | None = None     # HDF5 of report embeddings; default <output_dir>/reports.h5
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    batch_size: int = 1                 # bags per step; Cox needs >= 2 (the loss compares patients)
    patience: int = 10                  # early stopping: epochs without validation improvement
    balanced_sampler: bool = True
    max_instances: int | None = None    # random subset of instances per bag while training
    folds: int = 5
    val_fraction: float = 0.2           # of each training split, held out for early stopping
    seed: int = 0
    precision: str = "fp32"             # fp32 | bf16 (autocast)
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    bootstrap: int = 1000
    slides_dir: str | None = None       # slide images, for heatmaps and top-tile grids
    slide_extension: str = ".svs"
    slide_mpp: float | None = None      # microns per pixel for slide images that do not state it
    top_tiles: int = 16
    tile_size: int | None = None        # level-0 tile size; default from the HDF5 `coords` attrs

    def __post_init__(self) -> None:
        """Check choices early so a typo fails before hours of training."""
        choices = {"task": ("classification", "survival"), "modality": ("image", "text", "both"),
                   "model": ("abmil", "transmil", "meanpool"), "precision": ("fp32", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name!r} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}")
        if not self.loss:
            self.loss = "ce" if self.task == "classification" else "nll"
        valid_loss = ("ce",) if self.task == "classification" else ("nll", "cox")
        if self.loss not in valid_loss:
            raise ValueError(f"loss {self.loss!r} does not fit task {self.task!r}; use {valid_loss}")
        if self.loss == "cox" and self.batch_size < 2:
            raise ValueError("the Cox loss compares patients within a batch: set batch_size >= 2")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")

    def to_dict(self) -> dict:
        """Plain dict, the YAML layout."""
        return asdict(self)


def load_config(path: str | os.PathLike, **overrides) -> MilConfig:
    """Read a YAML file into :class:`MilConfig`; unknown keys are an error naming the file.

    Relative paths in ``cohort``, ``features_dir``, ``output_dir``, ``init_aggregator``,
    ``report_cache`` and ``slides_dir`` are taken relative to the YAML file's folder;
    ``overrides`` (e.g. from CLI flags) replace keys after that, as given.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    known = {f.name for f in fields(MilConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}; valid keys are {sorted(known)}")
    for key in ("cohort", "features_dir", "output_dir", "init_aggregator", "report_cache",
                "slides_dir"):
        value = data.get(key)
        if value and not Path(value).is_absolute() and not str(value).startswith("hf_hub:"):
            data[key] = str(path.parent / value)
    data.update({k: v for k, v in overrides.items() if v is not None})  # CLI flags, cwd-relative
    try:
        return MilConfig(**data)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from e
