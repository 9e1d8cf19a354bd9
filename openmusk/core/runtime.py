"""Where and how a command computes: the device (CUDA when present, this rank's GPU under
torchrun), the precision (fp32 | bf16 | fp16, one autocast helper) and seeds.

Every command and config resolves these here, so all of them have the same defaults:
``device: auto`` and ``precision: auto`` (bf16 autocast on a GPU that has it, else fp16 on older
GPUs; fp32 on the CPU).
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import ContextManager

import torch

__all__ = ["DEFAULT_DEVICE", "DEFAULT_PRECISION", "PRECISIONS", "resolve_device", "resolve_precision",
           "normalize_precision", "autocast", "precision_dtype", "seed_everything", "local_rank"]

DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "auto"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "fp32": "fp32", "32": "fp32", "full": "fp32",
            "bfloat16": "bf16", "bf16": "bf16",
            "float16": "fp16", "fp16": "fp16", "half": "fp16", "16": "fp16", "auto": "auto"}


def local_rank() -> int:
    """This process's GPU index under torchrun (``LOCAL_RANK``), else 0."""
    try:
        return int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        raise ValueError(f"LOCAL_RANK must be an integer, got {os.environ['LOCAL_RANK']!r}") from None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``auto``/None: ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU. A bare ``cuda`` also
    means this rank's GPU under torchrun; ``cuda:N`` and ``cpu`` are taken as given."""
    if isinstance(device, torch.device):
        return device
    name = (device or DEFAULT_DEVICE).strip().lower()
    if name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but no CUDA GPU is available (use cpu or auto)")
        return torch.device("cuda", local_rank())
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device (auto, cpu, cuda, cuda:N): {e}") from None


def normalize_precision(precision: str | None) -> str:
    """One spelling: fp32 | bf16 | fp16 | auto (float32/bfloat16/float16 are accepted)."""
    name = str(precision or DEFAULT_PRECISION).strip().lower()
    if name not in _ALIASES:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return _ALIASES[name]


def resolve_precision(precision: str | None, device: str | torch.device | None = None) -> str:
    """``auto`` -> bf16 on a GPU that supports it, fp16 on one that does not, fp32 on the CPU.

    fp16 is refused on the CPU (autocast has no fp16 path worth using there)."""
    p = normalize_precision(precision)
    dev = resolve_device(device)
    if p == "auto":
        if dev.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use precision bf16 or fp32 on the CPU")
    return p


def precision_dtype(precision: str) -> torch.dtype:
    """torch dtype of a resolved precision."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[normalize_precision(precision)]


def autocast(device: str | torch.device | None, precision: str | None) -> ContextManager:
    """Mixed-precision context for ``precision`` on ``device``; a no-op for fp32."""
    dev = resolve_device(device)
    p = resolve_precision(precision, dev)
    if p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=precision_dtype(p))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) for a reproducible run."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
