"""The benchmark run configuration: dataclasses whose fields are the keys of the run YAML.

```yaml
output_dir: results
models:
  - {name: musk, kind: musk, pretrained: "hf_hub:xiangjx/musk"}
  - {name: conch, kind: open_clip, model: "conch_ViT-B-16", pretrained: "hf_hub:MahmoodLab/conch"}
datasets:
  - {spec: unitopatho, root: /data/unitopatho}
  - {spec: my_dataset.yaml, root: /data/mine, tasks: [linear_probe, knn]}
```
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from openmusk.eval.specs import TASKS, check_keys

__all__ = ["ModelEntry", "DatasetEntry", "EvalConfig", "load_eval_config", "MODEL_KINDS"]

MODEL_KINDS = ("musk", "open_clip", "timm", "factory")


def _from_dict(cls, d: Any, where: str):
    """Build dataclass ``cls`` from a mapping, naming unknown keys and the file they came from."""
    check_keys(cls, d, where)
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from e


@dataclass
class ModelEntry:
    """One encoder: MUSK by config/weights, an open_clip or timm model by name, or a factory."""

    name: str
    kind: str = "musk"
    model: str | None = None
    pretrained: str | None = None
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model {self.name!r}: kind {self.kind!r} is not one of {MODEL_KINDS}")
        if self.kind == "factory" and (not self.factory or ":" not in self.factory):
            raise ValueError(f"model {self.name!r}: kind factory needs factory: 'module:function'")
        if self.kind in ("open_clip", "timm") and not self.model:
            raise ValueError(f"model {self.name!r}: kind {self.kind} needs model: <name>")

    def build(self, device: str):
        """Instantiate the encoder through the encoder registry (imports the model's library only now)."""
        from openmusk.encoders import load_encoder

        precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(self.dtype, self.dtype)
        if self.kind == "musk":
            weights = self.pretrained if self.pretrained else f"random:{self.model or 'musk_large_patch16_384'}"
            return load_encoder("musk", weights=weights, arch=self.model if self.pretrained else None,
                                device=device, precision=precision, name=self.name)
        if self.kind == "open_clip":
            return load_encoder("open_clip", model=self.model, weights=self.pretrained, device=device,
                                precision=precision, name=self.name)
        if self.kind == "timm":
            return load_encoder("timm", model=self.model, weights=self.pretrained not in (None, False, "false"),
                                device=device, precision=precision, name=self.name, **self.kwargs)
        enc = load_encoder(self.factory, **self.kwargs)
        enc.name = self.name
        return enc


@dataclass
class DatasetEntry:
    """One dataset: a built-in spec name or a spec YAML path, where its files are, which splits."""

    spec: str
    root: str
    tasks: list[str] | None = None
    train_split: str = "train"
    test_split: str = "test"
    val_split: str | None = None
    retrieval_splits: list[str] | None = None

    def __post_init__(self) -> None:
        bad = [t for t in (self.tasks or []) if t not in TASKS]
        if bad:
            raise ValueError(f"dataset {self.spec!r}: unknown task(s) {bad}; known: {TASKS}")


@dataclass
class EvalConfig:
    """A grid of models x datasets x tasks and the settings every task shares (paper defaults)."""

    models: list[ModelEntry]
    datasets: list[DatasetEntry]
    output_dir: str = "eval_results"
    cache_dir: str | None = None
    device: str = "cpu"
    batch_size: int = 64
    num_workers: int = 2
    n_resamples: int = 1000
    seed: int = 0
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 10, 50])
    image_retrieval_ks: list[int] = field(default_factory=lambda: [1, 3, 5])
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 10])
    few_shot_seeds: int = 10
    few_shot_C: float = 1.0
    knn_k: int = 20

    def __post_init__(self) -> None:
        self.models = [m if isinstance(m, ModelEntry) else _from_dict(ModelEntry, m, f"models[{i}]")
                       for i, m in enumerate(self.models)]
        self.datasets = [d if isinstance(d, DatasetEntry) else _from_dict(DatasetEntry, d, f"datasets[{i}]")
                         for i, d in enumerate(self.datasets)]
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not self.models or not self.datasets:
            raise ValueError("an eval config needs at least one model and one dataset")
        if self.cache_dir is None:
            self.cache_dir = str(Path(self.output_dir) / "features")


def load_eval_config(path: str | os.PathLike) -> EvalConfig:
    """Read a run YAML; relative dataset roots / output folders resolve against the YAML's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    cfg = _from_dict(EvalConfig, data, str(path))
    base = path.parent
    cfg.output_dir = str(base / cfg.output_dir)
    cfg.cache_dir = str(base / cfg.cache_dir) if "cache_dir" in data and cfg.cache_dir else str(
        Path(cfg.output_dir) / "features")
    for d in cfg.datasets:
        d.root = str(base / d.root)
        if d.spec.endswith((".yaml", ".yml")):
            d.spec = str(base / d.spec)
    return cfg
