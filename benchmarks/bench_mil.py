"""Slide-level training speed and memory: ABMIL / TransMIL steps per second for bags of 1k, 10k and
50k instances (peak memory per size, to show it grows linearly), and the epoch time of a synthetic
500-slide cohort.

    python benchmarks/bench_mil.py --quick      # about a minute on a 2-core CPU
    python benchmarks/bench_mil.py --sizes 1000 10000 50000 --steps 5 --cohort 500
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from openmusk.mil.models import MilModel, build_aggregator
from openmusk.mil.tasks import ClassificationTask
from openmusk.mil.trainer import FitConfig, fit


def _peak_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bag_steps(name: str, n: int, dim: int, steps: int) -> tuple[float, float]:
    """Training steps/s on one bag of ``n`` instances, and the activations saved for backward (MiB)."""
    torch.manual_seed(0)
    model = MilModel(build_aggregator(name, dim), 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(1, n, dim)
    label = torch.tensor([1])
    batch = {"features": x, "mask": torch.ones(1, n, dtype=torch.bool)}

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(batch)["logits"], label)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps / (time.perf_counter() - start)
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return rate, sum(saved) / 2 ** 20  # activation memory kept for backward


def cohort_epoch(n_slides: int, dim: int, mean_tiles: int) -> float:
    """Seconds for one ABMIL training epoch over ``n_slides`` in-memory bags (batch size 1)."""
    rng = np.random.default_rng(0)
    bags = []
    for i in range(n_slides):
        m = int(rng.integers(mean_tiles // 2, mean_tiles * 3 // 2))
        bags.append({"id": str(i), "features": torch.randn(m, dim), "coords": torch.zeros(m, 2, dtype=torch.long),
                     "slide_index": torch.zeros(m, dtype=torch.long), "label": i % 2,
                     "time": float("nan"), "event": -1, "bin": -1})
    model = MilModel(build_aggregator("abmil", dim), 2)
    start = time.perf_counter()
    fit(model, bags, None, ClassificationTask(["a", "b"]), FitConfig(epochs=1, device="cpu"))
    return time.perf_counter() - start


def main() -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--dim", type=int, default=2048, help="instance feature size (MUSK multiscale: 2048)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["abmil", "transmil", "meanpool"])
    ap.add_argument("--cohort", type=int, default=500, help="slides in the synthetic cohort")
    ap.add_argument("--tiles", type=int, default=1000, help="mean tiles per cohort slide")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="sizes 1k/10k/50k, 2 steps, ABMIL only, "
                    "50-slide cohort of 500 tiles, 1024-d")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.models, args.cohort, args.tiles, args.dim = 2, ["abmil"], 50, 500, 1024
    torch.set_num_threads(args.threads)
    print(f"# bag training steps (batch 1, {args.dim}-d instances, {args.threads} threads)")
    print(f"{'model':10s} {'instances':>9s} {'steps/s':>9s} {'act. MiB':>9s} {'MiB/1k inst':>11s}")
    for name in args.models:
        base = None
        for n in args.sizes:
            rate, mib = bag_steps(name, n, args.dim, args.steps)
            base = base or (rate, n)
            print(f"{name:10s} {n:9d} {rate:9.2f} {mib:9.1f} {mib / n * 1000:11.2f}"
                  f"   (time ratio vs {base[1]}: {base[0] / rate:.1f}x for {n / base[1]:.0f}x instances)")
    print(f"peak RSS after bag benchmarks: {_peak_mib():.0f} MiB")
    secs = cohort_epoch(args.cohort, args.dim, args.tiles)
    print(f"# ABMIL epoch over {args.cohort} slides (~{args.tiles} tiles each): {secs:.1f} s "
          f"({args.cohort / secs:.1f} slides/s); extrapolated 500 slides: {secs * 500 / args.cohort:.1f} s")
    print(f"peak RSS: {_peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
