"""Benchmark the patch-level evaluation: data-pipeline overhead and retrieval-metric cost.

1. Feature extraction images/s through the full pipeline (JPEG tiles on disk -> ImageFolderDataset
   -> MUSK transform in DataLoader workers -> model) versus the bare model forward on the same,
   already transformed tensors: the ratio is what reading and preprocessing add on top. Wall time
   and CPU seconds (workers included) are both reported: on a shared CPU the wall ratio moves with
   the machine's load, the CPU-seconds ratio much less.
2. Cross-modal Recall@k on N x N embeddings (chunked rank counting, both directions) versus the
   naive full similarity matrix + argsort, and image->image top-k neighbours; seconds and peak RSS.

    python benchmarks/bench_eval.py              # tiny model, 96 tiles, 10k x 10k retrieval
    python benchmarks/bench_eval.py --quick      # about a minute on 2 CPU cores
    python benchmarks/bench_eval.py --width 256 --depth 4 --n-images 48 --retrieval-n 100
                                                 # a model with real compute per image
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class TimedEncoder:
    """Wraps an encoder and adds up the seconds spent in its forward (inside the pipeline)."""

    def __init__(self, enc):
        self.enc, self.seconds = enc, 0.0
        self.name, self.transform, self.device = enc.name, enc.transform, enc.device
        self.worker_transform = getattr(enc, "worker_transform", None)

    def batch_transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc.batch_transform(x)

    def encode_image(self, x: torch.Tensor, kind: str = "embed", normalize: bool = True) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.enc.encode_image(x, kind=kind, normalize=normalize).cpu()
        self.seconds += time.perf_counter() - t0
        return out


def make_tiles(folder: Path, n: int, size: int) -> None:
    """Cut ``n`` JPEG tiles of the real tumour and stroma crops into an image folder."""
    from PIL import Image

    crops = {"tumour": Image.open(REAL / "hgsc_nest.jpg").convert("RGB"),
             "stroma": Image.open(REAL / "hgsc_stromal_he.jpg").convert("RGB")}
    per_row = 1500 // size
    for i in range(n):
        label = "tumour" if i % 2 == 0 else "stroma"
        j = (i // 2) % (per_row * per_row)
        box = ((j % per_row) * size, (j // per_row) * size)
        tile = crops[label].crop((*box, box[0] + size, box[1] + size))
        (folder / label).mkdir(parents=True, exist_ok=True)
        tile.save(folder / label / f"{i:05d}.jpg", quality=90)


def bench_extraction(args) -> None:
    from openmusk.core.runtime import resolve_device, resolve_precision
    from openmusk.data.datasets import ImageFolderDataset
    from openmusk.encoders import MuskEncoder, encode_dataset
    from openmusk.model import create_model, get_config

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision or "fp32", device)
    config = get_config(args.model)
    if args.width:  # a model between the tiny test model and the released one
        config = dataclasses.replace(config, embed_dim=args.width, num_heads=args.width // 64,
                                     ffn_dim=4 * args.width, depth=args.depth or config.depth)
    model = create_model(config, device=device)
    label = f"{args.model}" + (f" width {config.embed_dim} depth {config.depth}" if args.width else "")
    enc = MuskEncoder(model, name=label, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        make_tiles(Path(tmp), args.n_images, args.tile)
        ds = ImageFolderDataset(tmp)
        # the same tensors, decoded and transformed once, outside the timed region
        t0 = time.perf_counter()
        tensors = torch.stack([enc.transform(ds.load_image(i)) for i in range(len(ds))])
        prep = time.perf_counter() - t0
        print(f"decode + plain float transform alone, main process: {len(ds) / prep:.1f} img/s")
        encode_dataset(enc, ds, batch_size=args.batch_size, num_workers=args.num_workers,
                       progress=False)  # warm-up (threads, allocator, worker start)
        for kind in args.kinds:
            bare = bare_cpu = pipe = pipe_cpu = float("inf")
            timed, waits = TimedEncoder(enc), []
            for _ in range(args.repeats):  # interleaved; the best of each resists load spikes
                t0, c0 = time.perf_counter(), cpu_seconds()
                for s in range(0, len(tensors), args.batch_size):
                    enc.encode_image(tensors[s:s + args.batch_size], kind=kind).cpu()
                bare = min(bare, time.perf_counter() - t0)
                bare_cpu = min(bare_cpu, cpu_seconds() - c0)
                t0, c0, timed.seconds = time.perf_counter(), cpu_seconds(), 0.0
                fs = encode_dataset(timed, ds, kind=kind, batch_size=args.batch_size,
                                    num_workers=args.num_workers, progress=False)
                waits.append((time.perf_counter() - t0) / timed.seconds - 1)
                pipe = min(pipe, time.perf_counter() - t0)
                pipe_cpu = min(pipe_cpu, cpu_seconds() - c0)
                assert len(fs.features) == len(ds)
            print(f"extraction [{label}, {kind}, {device.type}/{precision}, {len(ds)} JPEG "
                  f"tiles {args.tile}px -> {model.config.img_size}px, batch {args.batch_size}, "
                  f"{args.num_workers} workers]: "
                  f"bare forward {len(ds) / bare:.1f} img/s, pipeline {len(ds) / pipe:.1f} img/s, "
                  f"pipeline/bare wall time = {pipe / bare:.3f} ({100 * (pipe / bare - 1):+.1f}%), "
                  f"CPU seconds (all processes) = {pipe_cpu / bare_cpu:.3f} "
                  f"({100 * (pipe_cpu / bare_cpu - 1):+.1f}%); within one pipeline run, time outside "
                  f"the model forward = {100 * min(waits):.1f}% of the forward time")
    print(f"peak RSS after extraction: {peak_rss_mib():.0f} MiB")


def bench_retrieval(args) -> None:
    from openmusk.eval.metrics import nearest_neighbors, recall_at_k, retrieval_ranks

    torch.set_num_threads(args.threads)
    n, d = args.retrieval_n, args.dim
    rng = np.random.default_rng(0)
    img = rng.normal(size=(n, d)).astype(np.float32)
    txt = (img + 8.0 * rng.normal(size=(n, d))).astype(np.float32)  # R@1 well below 1
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ids = np.arange(n)
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    r_t2i = retrieval_ranks(txt, img, ids, ids, chunk=args.chunk)
    r_i2t = retrieval_ranks(img, txt, ids, ids, chunk=args.chunk)
    chunked = time.perf_counter() - t0
    rss1 = peak_rss_mib()
    recalls = {k: float(recall_at_k(r_t2i, k).mean()) for k in (1, 10, 50)}
    t0 = time.perf_counter()
    sim = torch.from_numpy(img) @ torch.from_numpy(txt).T  # the whole n x n matrix
    order_t2i = torch.argsort(sim.T, dim=1, descending=True)
    order_i2t = torch.argsort(sim, dim=1, descending=True)
    naive_rank = (order_t2i == torch.arange(n)[:, None]).float().argmax(1).numpy()
    _ = (order_i2t == torch.arange(n)[:, None]).float().argmax(1)
    naive = time.perf_counter() - t0
    rss2 = peak_rss_mib()
    agree = float(np.mean(naive_rank == r_t2i))
    print(f"retrieval {n} x {n} (dim {d}), both directions: chunked rank counting {chunked:.2f} s "
          f"(peak RSS +{rss1 - rss0:.0f} MiB), full matrix + argsort {naive:.2f} s "
          f"(+{rss2 - rss1:.0f} MiB more); speed-up {naive / chunked:.1f}x; "
          f"ranks agree on {100 * agree:.2f}% of queries (ties aside); "
          f"t2i R@1/10/50 = {recalls[1]:.3f}/{recalls[10]:.3f}/{recalls[50]:.3f}")
    t0 = time.perf_counter()
    nearest_neighbors(img, 5, chunk=args.chunk)
    print(f"image->image top-5 neighbours of {n} items: {time.perf_counter() - t0:.2f} s")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


def main() -> None:
    from openmusk.cli.common import add_runtime_args, add_workers_arg

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="musk_tiny_patch16_384")
    p.add_argument("--width", type=int, default=0,
                   help="override the model width (heads = width/64, FFN = 4x width)")
    p.add_argument("--depth", type=int, default=0, help="override the depth (with --width)")
    p.add_argument("--n-images", type=int, default=96)
    p.add_argument("--tile", type=int, default=224, help="tile size on disk (resized to the model size)")
    p.add_argument("--batch-size", type=int, default=16)
    add_workers_arg(p, default=2)
    p.add_argument("--kinds", nargs="+", default=["embed", "probe"], choices=["embed", "probe"])
    p.add_argument("--retrieval-n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=1024, help="embedding width (MUSK large: 1024)")
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    add_runtime_args(p)   # --device (default auto), --precision (default here: fp32; --dtype accepted)
    p.add_argument("--quick", action="store_true",
                   help="64 tiles, embed only, 2 repeats, 5k x 5k retrieval")
    args = p.parse_args()
    if args.quick:
        args.n_images, args.kinds, args.retrieval_n, args.repeats = 64, ["embed"], 5000, 2
    bench_extraction(args)
    bench_retrieval(args)


if __name__ == "__main__":
    main()
