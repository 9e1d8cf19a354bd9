"""What one feature-extraction run needs: the encoder, how to run it, how to cut tiles.

Read with the shared loader, so a YAML/JSON file, ``--set KEY=VALUE`` and command-line flags are
checked alike::

    config = load_config(ExtractConfig, "extract.yaml", overrides={"tiling.overlap": 0.85})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from openmusk.core.config import path_field
from openmusk.core.runtime import normalize_precision
from openmusk.slide.tiling import TilingConfig
from openmusk.slide.tissue import ClassicalSegmenter

__all__ = ["ExtractConfig", "MUSK_ENCODERS", "MUSK_WEIGHTS"]

MUSK_ENCODERS = ("musk", "musk_singlescale")
MUSK_WEIGHTS = "hf_hub:xiangjx/musk"


@dataclass
class ExtractConfig:
    """Everything one extraction run needs; a YAML file has exactly these keys (nested sections)."""

    encoder: str = "musk"            # registry name (openmusk.encoders.list_encoders()) or module:function
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)   # extra arguments of the encoder factory
    weights: str | None = path_field(MUSK_WEIGHTS)   # file, hf_hub:owner/name; None/random[:ARCH]: random
    arch: str | None = None          # MUSK config name; default: read from the weights (random: large)
    multiscale: bool = True          # MUSK: 2D-wide multiscale features; false: D-wide single-scale
    batch_size: int = 32
    num_workers: int = 2             # DataLoader processes reading tiles
    precision: str = "auto"          # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"             # auto: cuda:LOCAL_RANK when available, else cpu
    slide_mpp: float | None = None   # level-0 µm/px for files that state none (PNG/JPEG, some TIFFs)
    segment_mpp: float = 4.0         # thumbnail resolution for tissue segmentation (thin strands need 4)
    layout: str = "openmusk"         # output folders: openmusk | trident | clam (their tools read them as is)
    coords_dir: str | None = path_field(None)   # encode exactly these tiles (TRIDENT/CLAM coords files)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    segmenter: ClassicalSegmenter = field(default_factory=ClassicalSegmenter)

    renamed_keys: ClassVar[dict[str, str]] = {"model": "arch"}

    def __post_init__(self) -> None:
        self.precision = normalize_precision(self.precision)
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {self.batch_size}, "
                             f"{self.num_workers}")
        if self.layout not in ("openmusk", "trident", "clam"):
            raise ValueError(f"layout must be openmusk, trident or clam, got {self.layout!r}")
        if self.encoder not in MUSK_ENCODERS and (self.arch is not None or not self.multiscale):
            raise ValueError(f"arch and multiscale are MUSK options; encoder {self.encoder!r} takes its "
                             "options from encoder_kwargs")

    def encoder_args(self) -> tuple[str, dict[str, Any]]:
        """Registry name and factory arguments for :func:`openmusk.encoders.load_encoder`.

        MUSK gets ``weights`` and ``arch`` (``multiscale: false`` selects ``musk_singlescale``);
        another encoder gets ``weights`` only when it is set to something other than MUSK's release.
        """
        kwargs = dict(self.encoder_kwargs)
        if self.encoder in MUSK_ENCODERS:
            name = "musk_singlescale" if not self.multiscale else self.encoder
            kwargs.update(weights=self.weights or "random", arch=self.arch)
            return name, kwargs
        if self.weights != MUSK_WEIGHTS:
            kwargs["weights"] = self.weights
        return self.encoder, kwargs
