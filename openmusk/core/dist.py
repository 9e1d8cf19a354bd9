"""``torch.distributed`` helpers: one code path for 1 process, torchrun on CPU (gloo) or GPUs (nccl).

Ranks are read from the environment torchrun sets; there is no coordinator of our own.
"""
from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["rank", "world_size", "is_main", "init_distributed", "shard_items", "barrier",
           "all_gather_with_grad", "all_reduce_sum"]

T = TypeVar("T")


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """True on rank 0: the process that prints summaries and writes shared files."""
    return rank() == 0


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns True if joined.

    The backend defaults to nccl when CUDA is available, else gloo (CPU).
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    from openmusk.core.runtime import resolve_device

    device = resolve_device("auto")  # this rank's GPU under torchrun, else the CPU
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def shard_items(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """The items this rank owns: every ``world``-th item starting at ``rank`` (covers all exactly once)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(items[r::w])


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (equal shapes) from all ranks in rank order, keeping the gradient path.

    Used by the contrastive loss so that every rank's features act as negatives for every other
    rank. Identity when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a (non-differentiable) tensor over ranks; ``x`` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x
