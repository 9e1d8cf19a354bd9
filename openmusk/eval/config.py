"""The benchmark run configuration: dataclasses whose fields are the keys of the run YAML.

```yaml
output_dir: results
models:
  - {name: musk, kind: musk, pretrained: "hf_hub:xiangjx/musk"}
  - {name: conch, kind: conch}          # CONCH's own package; plip, uni, virchow, gigapath alike
  - {name: vit_random, kind: timm, model: vit_small_patch16_224, pretrained: false}
datasets:
  - {spec: unitopatho, root: /data/unitopatho}
  - {spec: my_dataset.yaml, root: /data/mine, tasks: [linear_probe, knn]}
```

``protocol`` chooses how tasks are computed: ``clip-benchmark`` (LAION CLIP_benchmark defaults:
re-normalised zero-shot class embeddings, scikit-learn logistic-regression probes, retrieval on
the test split) or ``musk-paper`` (the MUSK authors' code, number for number; see
:mod:`openmusk.eval.paper`). Unset, each dataset spec's own ``protocol`` applies (``musk-paper`` for
the paper's datasets). ``data_root`` holds one folder per dataset, named as its spec, for the
datasets given without ``root``. ``openmusk eval run --paper`` runs the paper's grid
(``openmusk/eval/paper_grid.yaml``).

Read with ``load_config(EvalConfig, "bench.yaml")`` (:mod:`openmusk.core.config`): relative
``output_dir``, ``cache_dir``, dataset ``root``, ``.yaml`` spec paths and local weight files
resolve against the YAML's folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Union

from openmusk.core.config import config_from_dict, example_yaml, load_config, notice, path_field
from openmusk.core.runtime import DEFAULT_DEVICE, DEFAULT_PRECISION, normalize_precision
from openmusk.eval.specs import TASKS, normalize_protocol

__all__ = ["ModelEntry", "DatasetEntry", "EvalConfig", "load_eval_config", "model_kinds", "example_eval_yaml",
           "is_weights_file", "paper_grid_config", "PAPER_GRID"]

PAPER_GRID = Path(__file__).with_name("paper_grid.yaml")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_MUSK_KINDS = ("musk", "musk_singlescale")
_OLD_FACTORY_MODULE = "openmusk.eval.encoders:"


def is_weights_file(value: str) -> bool:
    """Whether a weights string names a local file by its suffix (so a config resolves it like other
    paths), rather than a hub id, a tag or a name."""
    return value.lower().endswith(WEIGHT_SUFFIXES)


def _timm_weights(pretrained: Union[bool, str, None]) -> Union[bool, str]:
    """timm's ``weights``: False (random; also when unset, as always), True (the weights the model
    name points to, also for a hub id or tag string), or a local weights file."""
    if pretrained in (None, False) or pretrained == "random":
        return False
    if isinstance(pretrained, str) and is_weights_file(pretrained):
        return pretrained
    return True


def model_kinds() -> list[str]:
    """Every ``kind`` a model entry may have: the registered encoders and ``factory``."""
    from openmusk.encoders import list_encoders

    return sorted(list_encoders()) + ["factory"]


@dataclass
class ModelEntry:
    """One encoder of the grid, built through :func:`openmusk.encoders.load_encoder`.

    ``kind`` is a registered encoder name (``musk``, ``musk_singlescale``, ``open_clip``,
    ``timm``, ``hf``, ``color_stats``, ...) or ``factory`` with ``factory: module:function``.
    ``model`` is the architecture (a MUSK config, an open_clip / timm / transformers model name).
    ``pretrained``: ``false`` gives random weights for every kind; ``true`` the kind's default
    weights; a string a weights file, hub id or open_clip tag; unset keeps each kind's default
    (MUSK and timm: random, as before; open_clip and hf: the weights that come with the name).
    """

    renamed_keys: ClassVar[dict] = {"dtype": "precision"}

    name: str
    kind: str = "musk"
    model: Optional[str] = None
    pretrained: Union[bool, str, None] = path_field(None, when=is_weights_file)
    factory: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    precision: Optional[str] = None       # None: the run's precision

    def __post_init__(self) -> None:
        kinds = model_kinds()
        if self.kind not in kinds:
            raise ValueError(f"model {self.name!r}: kind {self.kind!r} is not one of {kinds}")
        if self.kind == "factory" and (not self.factory or ":" not in self.factory):
            raise ValueError(f"model {self.name!r}: kind factory needs factory: 'module:function'")
        if self.factory and self.factory.startswith(_OLD_FACTORY_MODULE):
            new = "openmusk.encoders:" + self.factory[len(_OLD_FACTORY_MODULE):]
            notice(f"model {self.name!r}: factory {self.factory!r} is now {new!r}")
            self.factory = new
        if self.kind in ("open_clip", "timm", "hf") and not self.model:
            raise ValueError(f"model {self.name!r}: kind {self.kind} needs model: <name>")
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() in ("true", "false"):
            self.pretrained = self.pretrained.strip().lower() == "true"
        if self.precision is not None:
            self.precision = normalize_precision(self.precision)

    def encoder_args(self) -> tuple[str, dict[str, Any]]:
        """The ``load_encoder`` name and keyword arguments this entry stands for."""
        kw: dict[str, Any] = dict(self.kwargs)
        if self.kind in _MUSK_KINDS:
            if self.model:
                kw["arch"] = self.model
            if self.pretrained in (None, False):
                kw["weights"] = "random"
            elif self.pretrained is not True:  # True: the released weights, the factory's default
                kw["weights"] = self.pretrained
            return self.kind, kw
        if self.model:
            kw["model"] = self.model
        if self.kind == "timm":
            kw["weights"] = _timm_weights(self.pretrained)
        elif self.pretrained is not None:
            kw["weights"] = self.pretrained
        return (self.factory if self.kind == "factory" else self.kind), kw

    def build(self, device: Any = None, precision: str | None = None):
        """The encoder on ``device`` (its library is imported only now); named as the entry."""
        from openmusk.encoders import load_encoder

        name, kw = self.encoder_args()
        enc = load_encoder(name, device=device, precision=self.precision or precision, **kw)
        enc.name = self.name
        return enc


def _is_spec_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml"))


@dataclass
class DatasetEntry:
    """One dataset: a built-in spec name or a spec YAML path, where its files are (default: the
    spec's ``root``), which splits."""

    spec: str = path_field(when=_is_spec_file)
    root: Optional[str] = path_field(None)
    tasks: Optional[list[str]] = None
    train_split: str = "train"
    test_split: str = "test"
    val_split: Optional[str] = None
    retrieval_splits: Optional[list[str]] = None
    protocol: Optional[str] = None          # None: the run's, else the spec's

    def __post_init__(self) -> None:
        bad = [t for t in (self.tasks or []) if t not in TASKS]
        if bad:
            raise ValueError(f"dataset {self.spec!r}: unknown task(s) {bad}; known: {TASKS}")
        self.protocol = normalize_protocol(self.protocol, f"dataset {self.spec!r} protocol")


@dataclass
class EvalConfig:
    """A grid of models x datasets x tasks and the settings every task shares (paper defaults)."""

    models: list[ModelEntry]
    datasets: list[DatasetEntry]
    output_dir: str = path_field("eval_results")
    data_root: Optional[str] = path_field(None)   # <data_root>/<spec name> for datasets without root
    protocol: Optional[str] = None                # clip-benchmark | musk-paper; None: each spec's
    cache_dir: Optional[str] = path_field(None)   # None: output_dir/features
    device: str = DEFAULT_DEVICE
    precision: str = DEFAULT_PRECISION
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
        self.models = [m if isinstance(m, ModelEntry) else config_from_dict(ModelEntry, m, f"models[{i}]")
                       for i, m in enumerate(self.models)]
        self.datasets = [d if isinstance(d, DatasetEntry) else config_from_dict(DatasetEntry, d, f"datasets[{i}]")
                         for i, d in enumerate(self.datasets)]
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not self.models or not self.datasets:
            raise ValueError("an eval config needs at least one model and one dataset")
        self.precision = normalize_precision(self.precision)
        self.protocol = normalize_protocol(self.protocol)
        if self.cache_dir is None:
            self.cache_dir = str(Path(self.output_dir) / "features")


def load_eval_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> EvalConfig:
    """A run YAML read by :func:`openmusk.core.config.load_config` (``overrides``: ``--set`` keys)."""
    return load_config(EvalConfig, path, overrides)


def paper_grid_config(overrides: Mapping[str, Any] | None = None) -> EvalConfig:
    """The MUSK paper's patch-benchmark grid (``paper_grid.yaml``: the released MUSK on the
    paper's datasets and tasks, ``protocol: musk-paper``) with ``overrides`` (e.g. ``data_root``,
    ``output_dir``) applied; relative paths stay relative to the working directory."""
    from openmusk.core.config import read_mapping, replace_config

    cfg = config_from_dict(EvalConfig, read_mapping(PAPER_GRID), str(PAPER_GRID))
    return replace_config(cfg, dict(overrides or {}), "--paper override")


def example_eval_yaml() -> str:
    """The ``eval run --example`` text: every run key with its default, and one model and one
    dataset entry with theirs (``example_yaml`` alone would show those lists as ``null``)."""
    entries = {"models": ModelEntry, "datasets": DatasetEntry}
    out = []
    for line in example_yaml(EvalConfig).splitlines(keepends=True):
        key = line.split(":", 1)[0]
        if key in entries:
            item = example_yaml(entries[key]).splitlines()
            out.append(f"{key}:  # required, one entry or more\n")
            out += [f"{'- ' if i == 0 else '  '}{row}\n" for i, row in enumerate(item)]
        else:
            out.append(line)
    return "".join(out)
