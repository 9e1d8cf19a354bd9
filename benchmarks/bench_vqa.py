"""VQA fine-tuning and inference speed of MUSK at tiny and large sizes (random weights).

Measures, in one run: training samples/s (forward, cross-entropy, backward, AdamW step) and
inference samples/s (fused forward + softmax) for each size, the tiny/large ratios, and peak
memory (process RSS via getrusage; CUDA: max allocated). Quick run (a minute or two on CPU):

    python benchmarks/bench_vqa.py --steps 1 --large-batch-size 1 --img-size 224

Full fine-tuning of the large model on CPU needs ~12 GiB (fp32 weights, gradients, AdamW state).
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time

import torch
import torch.nn.functional as F

from openmusk.cli.common import add_runtime_args
from openmusk.core.runtime import autocast, resolve_device, resolve_precision
from openmusk.eval.vqa import MuskVQA, VQATrainConfig, set_trainable
from openmusk.eval.vqa.train import build_vqa_optimizer
from openmusk.model import create_model, get_config
from openmusk.text import get_tokenizer

QUESTIONS = ["is there evidence of necrosis in this image?", "what does this image show?",
             "are the nuclei pleomorphic?", "where is the lesion located?"]
SIZES = {"tiny": "musk_tiny_patch16_384", "base": "musk_base_patch16_384",
         "large": "musk_large_patch16_384"}


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA max allocated, else the process's maximum resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, batch: int, steps: int, answers: int, max_len: int, freeze: str,
          precision: str, device: torch.device, img_size: int | None = None) -> dict:
    """Train and inference samples/s of one model size."""
    torch.manual_seed(0)
    config = get_config(SIZES[name])
    if img_size:
        config = dataclasses.replace(config, img_size=img_size)
    model = MuskVQA(create_model(config, device=device), answers).to(device)
    size = model.backbone.config.img_size
    trainable = set_trainable(model, freeze, last_k=1)
    opt = build_vqa_optimizer(model, VQATrainConfig(data="-", lr=1e-5))
    ids, mask = get_tokenizer()([QUESTIONS[i % 4] for i in range(batch)], max_len=max_len)
    images = torch.randn(batch, 3, size, size, device=device)
    ids, mask = ids.to(device), mask.to(device)
    target = torch.randint(0, answers, (batch,), device=device)

    def train_step() -> None:
        with autocast(device, precision):
            logits = model(images, ids, mask)
        F.cross_entropy(logits.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step() -> None:
        with autocast(device, precision):
            model(images, ids, mask).float().softmax(-1)

    out = {"size": name, "parameters": sum(p.numel() for p in model.parameters()),
           "trainable": trainable, "batch": batch}
    for phase, fn, mode in (("train", train_step, model.train), ("infer", infer_step, model.eval)):
        mode()
        fn()  # warm-up (allocations, AdamW state)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        out[f"{phase}_samples_per_s"] = steps * batch / (time.perf_counter() - t0)
        out[f"peak_mib_after_{phase}"] = peak_memory_mib(device)
    del model, opt
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,large", help="comma-separated: tiny, base, large")
    p.add_argument("--batch-size", type=int, default=8, help="batch for tiny/base")
    p.add_argument("--large-batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per phase (after one warm-up)")
    p.add_argument("--answers", type=int, default=4092, help="answer vocabulary size (PathVQA-like)")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--img-size", type=int, default=None,
                   help="image size (default: the model's 384; smaller for a quicker CPU run)")
    p.add_argument("--freeze", default="full", choices=["full", "last_k", "heads"])
    add_runtime_args(p)   # --device (default auto), --precision (default auto; --bf16 accepted)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    print(f"device {device}, threads {torch.get_num_threads()}, precision {precision}, freeze {args.freeze}, "
          f"image {args.img_size or 384} px, question tokens {args.max_len}, answers {args.answers}")
    results = []
    for name in args.sizes.split(","):
        batch = args.large_batch_size if name == "large" else args.batch_size
        r = bench(name, batch, args.steps, args.answers, args.max_len, args.freeze, precision, device,
                  args.img_size)
        results.append(r)
        print(f"{name:6s} params {r['parameters'] / 1e6:8.1f}M  batch {batch:3d}  "
              f"train {r['train_samples_per_s']:8.3g} samples/s  "
              f"infer {r['infer_samples_per_s']:8.3g} samples/s  "
              f"peak {r['peak_mib_after_train']:8.0f} MiB (train) {r['peak_mib_after_infer']:8.0f} MiB (so far)")
        sys.stdout.flush()
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"ratio {a['size']}/{b['size']}: train {a['train_samples_per_s'] / b['train_samples_per_s']:.1f}x, "
              f"infer {a['infer_samples_per_s'] / b['infer_samples_per_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
