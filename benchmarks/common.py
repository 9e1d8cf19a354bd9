"""Shared benchmark helpers: timing, this machine's matmul peak, peak memory."""
from __future__ import annotations

import resource
import time
from typing import Callable

import torch


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Fastest wall time of ``repeats`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """This machine's achieved matmul FLOP/s for a large square product (the 'peak' we compare to)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / best_time(lambda: a @ b, repeats=repeats)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """Current resident memory of this process."""
    return _status("VmRSS")


def hwm_bytes() -> int:
    """Peak resident memory of this process image. Unlike ru_maxrss, it does not inherit the
    parent's peak across fork + exec, so a subprocess measures only itself."""
    return _status("VmHWM")
