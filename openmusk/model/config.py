"""MUSK model configuration and the named configurations (released model and test sizes)."""
from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass
from typing import Any, Optional, Sequence

__all__ = ["MuskConfig", "CONFIGS", "get_config", "list_configs"]


@dataclass
class MuskConfig:
    """Sizes of a MUSK multiway transformer; the defaults are the released ``musk_large_patch16_384``.

    ``texts`` is accepted and ignored: exported test configs (the parity fixtures) carry example
    texts beside the sizes, and ``MuskConfig(**json)`` must take them as they are.
    """

    embed_dim: int = 1024
    num_heads: int = 16
    ffn_dim: int = 4096
    depth: int = 24
    img_size: int = 384
    patch_size: int = 16
    vocab_size: int = 64010
    max_text_positions: int = 1024
    layer_norm_eps: float = 1e-5
    drop_path_rate: float = 0.0
    texts: InitVar[Optional[Sequence[str]]] = None

    def __post_init__(self, texts: Optional[Sequence[str]]) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid_size(self) -> int:
        """Patches per side of the image."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "MuskConfig") -> "MuskConfig":
        """Build from a dict (checkpoint metadata, a config section) with the checks of every
        openmusk config: unknown keys named with the closest valid one, typed values."""
        from openmusk.core.config import config_from_dict

        return config_from_dict(cls, {k: v for k, v in d.items() if k != "texts"}, where)

CONFIGS: dict[str, MuskConfig] = {
    # the released checkpoint (xiangjx/musk): 675,188,737 parameters
    "musk_large_patch16_384": MuskConfig(),
    # BEiT-3 base sizes, for pretraining from scratch on modest hardware
    "musk_base_patch16_384": MuskConfig(embed_dim=768, num_heads=12, ffn_dim=3072, depth=12),
    # small random models for tests and the weight-less demo
    "musk_tiny_patch16_384": MuskConfig(embed_dim=64, num_heads=2, ffn_dim=128, depth=2),
    # the parity fixture's configuration (shared/fixtures/musk_parity/tiny_musk_config.json)
    "musk_tiny_patch16_32": MuskConfig(embed_dim=32, num_heads=2, ffn_dim=64, depth=2, img_size=32),
}


def list_configs() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(CONFIGS)


def get_config(name: str) -> MuskConfig:
    """A fresh copy of the named configuration."""
    if name not in CONFIGS:
        raise KeyError(f"unknown MUSK config {name!r}; known: {', '.join(list_configs())}")
    return dataclasses.replace(CONFIGS[name])
