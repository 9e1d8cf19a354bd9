"""Checkpoints in the released MUSK layout: validate by name, load without a second copy, save.

Accepted: ``.safetensors`` (read tensor by tensor), ``.pth`` / ``.bin`` / ``.pt`` (``torch.load``
with ``weights_only=True``, memory-mapped), a state dict wrapped in an outer ``model`` / ``module``
/ ``state_dict`` key, and names with a ``module.`` / ``model.`` prefix (DDP exports). A checkpoint
made at another image size is loaded by interpolating its vision position table.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..core.io import CheckpointFileError, atomic_path, torch_load
from .config import MuskConfig
from .hub import resolve_weights
from .musk import POSITION_OFFSET, Musk, interpolate_positions

__all__ = ["CheckpointMismatchError", "CheckpointReader", "CheckpointReport", "load_checkpoint",
           "save_checkpoint", "config_from_checkpoint", "check_checkpoint"]

VISION_POSITIONS = "beit3.encoder.embed_positions.A.weight"
CONFIG_METADATA_KEY = "openmusk_config"
_WRAPPER_KEYS = ("model", "module", "state_dict")
_PREFIXES = ("module.", "model.")
# heads cannot be read from tensor shapes; these are the known sizes (head dim 64 otherwise)
_KNOWN_HEADS = {1024: 16, 768: 12, 64: 2, 32: 2}


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model; lists every missing, unexpected, mis-shaped name."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"checkpoint {source} does not match the model:"]
        lines += [f"  missing:     {k}" for k in missing]
        lines += [f"  unexpected:  {k}" for k in unexpected]
        lines += [f"  mis-shaped:  {k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
        super().__init__("\n".join(lines))


class CheckpointReader:
    """Names, shapes and tensors of a checkpoint file, one tensor at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.metadata: dict[str, str] = {}
        if self.path.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                self._st = safe_open(self.path, framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error types
                raise ValueError(f"{self.path}: not a readable safetensors file ({e})") from e
            self.metadata = self._st.metadata() or {}
            raw = {k: k for k in self._st.keys()}
            self._get: Callable[[str], torch.Tensor] = self._st.get_tensor
            self._shape = lambda k: tuple(self._st.get_slice(k).get_shape())
        else:
            sd = self._torch_load(self.path)
            raw = {k: k for k in sd}
            self._get = lambda k: sd[k]
            self._shape = lambda k: tuple(sd[k].shape)
        self.names = _strip_prefixes(raw)  # clean name -> stored name

    @staticmethod
    def _torch_load(path: str) -> dict[str, torch.Tensor]:
        try:
            obj = torch_load(path, mmap=True)
        except CheckpointFileError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch_load(path)
        for key in _WRAPPER_KEYS:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'model'/'module')")
        return obj

    def shapes(self) -> dict[str, tuple]:
        return {k: self._shape(stored) for k, stored in self.names.items()}

    def tensor(self, name: str) -> torch.Tensor:
        return self._get(self.names[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)


def _strip_prefixes(names: dict[str, str]) -> dict[str, str]:
    """Drop a ``module.`` / ``model.`` prefix that every name carries (repeatedly: ``module.model.``)."""
    changed = True
    while changed and names:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in names):
                names = {k[len(p):]: v for k, v in names.items()}
                changed = True
    return names


def config_from_checkpoint(source: str | os.PathLike) -> MuskConfig:
    """The model configuration of a checkpoint: from its metadata if we wrote it, else its shapes."""
    reader = CheckpointReader(resolve_weights(source))
    if CONFIG_METADATA_KEY in reader.metadata:
        return MuskConfig.from_dict(json.loads(reader.metadata[CONFIG_METADATA_KEY]))
    return _config_from_shapes(reader.shapes(), reader.path)


def _config_from_shapes(shapes: dict[str, tuple], source: str) -> MuskConfig:
    try:
        d, _, patch, _ = shapes["beit3.vision_embed.proj.weight"]
        grid = math.isqrt(shapes[VISION_POSITIONS][0] - POSITION_OFFSET - 1)
        depth = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"beit3\.encoder\.layers\.(\d+)\.", k)))
        ffn = shapes["beit3.encoder.layers.0.ffn.A.fc1.weight"][0]
        vocab = shapes["beit3.text_embed.weight"][0]
        text_pos = shapes["beit3.encoder.embed_positions.B.weight"][0]
    except (KeyError, ValueError) as e:
        raise ValueError(f"{source}: not a MUSK checkpoint in the released layout (cannot read {e})") from e
    heads = _KNOWN_HEADS.get(d, max(1, d // 64))
    return MuskConfig(embed_dim=d, num_heads=heads, ffn_dim=ffn, depth=depth, img_size=grid * patch,
                      patch_size=patch, vocab_size=vocab, max_text_positions=text_pos)


def load_checkpoint(model: nn.Module, source: str | os.PathLike, *, strict: bool = True,
                    cache_dir: Optional[str | os.PathLike] = None) -> nn.Module:
    """Load released-layout weights into ``model`` (in place; returns it).

    A model built on the meta device receives the loaded tensors themselves (no second copy);
    a materialised model is filled one tensor at a time. Tensors are cast to the model's dtype.
    With ``strict``, any missing, unexpected or mis-shaped tensor raises one
    :class:`CheckpointMismatchError` naming them all.
    """
    path = resolve_weights(source, cache_dir=cache_dir)
    reader = CheckpointReader(path)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    shapes = reader.shapes()
    resize = VISION_POSITIONS in shapes and VISION_POSITIONS in expected and \
        shapes[VISION_POSITIONS] != expected[VISION_POSITIONS][0] and \
        shapes[VISION_POSITIONS][1:] == expected[VISION_POSITIONS][0][1:]
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = [(k, shapes[k], expected[k][0]) for k in sorted(set(shapes) & set(expected))
                  if shapes[k] != expected[k][0] and not (resize and k == VISION_POSITIONS)]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(path, missing if strict else [], unexpected if strict else [], mismatched)

    on_meta = any(p.is_meta for p in model.parameters())
    loaded: dict[str, torch.Tensor] = {}
    targets = model.state_dict()
    for name in reader:
        if name not in expected:
            continue
        t = reader.tensor(name)
        if resize and name == VISION_POSITIONS:
            grid = math.isqrt(expected[name][0][0] - POSITION_OFFSET - 1)
            t = interpolate_positions(t.float(), grid)
        t = t.to(expected[name][1])
        if on_meta:
            loaded[name] = t
        else:
            with torch.no_grad():
                targets[name].copy_(t)
        del t
    if on_meta:
        model.load_state_dict(loaded, strict=strict, assign=True)
    return model


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: Optional[dict[str, Any]] = None) -> Path:
    """Save ``model`` as safetensors in the released layout, with its config in the metadata (atomic)."""
    from safetensors.torch import save_file

    meta = {k: str(v) for k, v in (metadata or {}).items()}
    config = getattr(model, "config", None)
    if isinstance(config, MuskConfig):
        meta[CONFIG_METADATA_KEY] = json.dumps(config.to_dict())
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors.tmp") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


@dataclass
class CheckpointReport:
    """What a checkpoint holds and how it compares with the model its configuration describes."""

    path: str
    config: MuskConfig
    shapes: dict[str, tuple] = field(repr=False)
    metadata: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when names and shapes are exactly the released layout of ``config``."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def n_parameters(self) -> int:
        """Number of values stored in the checkpoint."""
        return sum(math.prod(s) for s in self.shapes.values())


def check_checkpoint(source: str | os.PathLike, cache_dir: Optional[str | os.PathLike] = None) -> CheckpointReport:
    """Read a checkpoint's names and shapes (no weights loaded), infer its configuration and check
    every tensor against the model that configuration builds (on the meta device)."""
    path = resolve_weights(source, cache_dir=cache_dir)
    reader = CheckpointReader(path)
    shapes = reader.shapes()
    config = config_from_checkpoint(path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Musk(config).state_dict().items()}
    return CheckpointReport(
        path=str(path), config=config, shapes=shapes, metadata=dict(reader.metadata),
        missing=sorted(set(expected) - set(shapes)), unexpected=sorted(set(shapes) - set(expected)),
        mismatched=[(k, shapes[k], expected[k]) for k in sorted(set(shapes) & set(expected))
                    if shapes[k] != expected[k]])
