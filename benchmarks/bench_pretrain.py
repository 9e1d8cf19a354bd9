"""Pretraining speed and memory: training samples/s per stage and size, and what checkpointing saves.

Each (stage, size, activation checkpointing) cell runs in its own process, so its peak RSS
(``resource.getrusage``) is its own. Activation memory is read from the peak of one forward +
backward taken before the optimiser exists (model + gradients + activations; AdamW's update
temporaries would otherwise set the peak): with and without checkpointing the rest is equal, so
the difference is what checkpointing saves. The tokenizer stage runs at each ``--tokenizers`` size
(default: the small one and the authors' ``vqkd_base_decoder_3x768x12``), taught by the model of
the row. The RSS after a warm-up step is printed as the
model + optimiser baseline. Batches are synthetic
tensors of the right shapes, so the numbers are the model's, not the data pipeline's.

    python benchmarks/bench_pretrain.py --quick          # a minute or two on a laptop CPU
    python benchmarks/bench_pretrain.py --sizes musk_base_patch16_384 --batch 8 --steps 5
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    """Resident set size now, in MiB (from /proc/self/statm)."""
    import os
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _cell(stage: str, size: str, batch: int, steps: int, img_size: int, ckpt: bool, text_len: int,
          tokenizer: str = "vqkd_small") -> dict:
    """Time ``steps`` optimiser steps of one stage after one warm-up step; report speed and memory."""
    import dataclasses

    import numpy as np
    import torch

    import openmusk
    from openmusk.core.optim import build_adamw, param_groups
    from openmusk.pretrain.contrastive import ContrastiveAlignment
    from openmusk.pretrain.masked import MaskedModelling
    from openmusk.pretrain.masking import block_mask, mask_text
    from openmusk.pretrain.vqkd import VQKD, VQKDConfig, VQKDObjective, resolve_teacher, vqkd_config

    torch.manual_seed(0)
    cfg = dataclasses.replace(openmusk.get_config(size), img_size=img_size, drop_path_rate=0.1)
    model = openmusk.create_model(cfg).train()
    model.set_grad_checkpointing(ckpt)
    grid = cfg.grid_size
    rng = np.random.default_rng(0)
    images = torch.randn(batch, 3, img_size, img_size)
    ids = torch.randint(4, 64000, (batch, text_len))
    ids[:, 0], ids[:, -1] = 0, 2
    pad = torch.zeros_like(ids)
    masked = torch.stack([mask_text(ids[i], 0.15, rng)[0] for i in range(batch)])
    labels = torch.stack([mask_text(ids[i], 0.15, np.random.default_rng(i))[1] for i in range(batch)])
    if stage == "tokenizer":
        model.eval().requires_grad_(False)
        teacher = resolve_teacher(lambda x: model.encode_image_tokens(x)[:, 1:], grid)
        tcfg = vqkd_config(tokenizer, img_size=img_size, teacher_dim=cfg.embed_dim)
        objective = VQKDObjective(VQKD(tcfg), teacher)
        kwargs = {"image": images}
    elif stage == "masked":
        tok = VQKD(VQKDConfig(img_size=img_size, teacher_dim=8))
        objective = MaskedModelling(model, tok)
        vm = torch.stack([torch.from_numpy(block_mask(grid, int(0.4 * grid * grid), rng)).flatten()
                          for _ in range(batch)])
        kwargs = {"image": images, "vision_mask": vm, "masked_ids": masked, "padding_mask": pad,
                  "mlm_labels": labels}
    else:
        objective = ContrastiveAlignment(model)   # the authors' decoder: 4 blocks x 16 heads
        kwargs = {"image": images, "input_ids": ids, "padding_mask": pad, "masked_ids": masked,
                  "mlm_labels": labels}
    # memory: one forward + backward before any optimiser exists, so the peak is
    # model + gradients + the step's activations (AdamW's temporaries would hide the latter)
    objective(**kwargs)["loss"].backward()
    fwd_bwd_peak = _rss_mb()
    opt = build_adamw(param_groups(objective), 1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        objective(**kwargs)["loss"].backward()
        opt.step()

    step()  # warm-up (also allocates the optimiser state)
    base = _current_rss_mb()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"stage": stage, "size": size, "img_size": img_size, "batch": batch, "ckpt": ckpt, "tokenizer": tokenizer,
            "samples_per_s": batch * steps / dt, "fwd_bwd_peak_mb": fwd_bwd_peak,
            "peak_rss_mb": _rss_mb(), "rss_after_warmup_mb": base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["musk_tiny_patch16_384", "musk_base_patch16_384"])
    p.add_argument("--stages", nargs="+", default=["tokenizer", "masked", "contrastive"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--text-len", type=int, default=100)
    p.add_argument("--tokenizers", nargs="+", default=["vqkd_small", "vqkd_base_decoder_3x768x12"],
                   help="tokenizer sizes of the tokenizer stage (the authors': vqkd_base_decoder_3x768x12)")
    p.add_argument("--quick", action="store_true", help="batch 2, 2 timed steps, 224 px, text 32")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_cell(**json.loads(a.worker))))
        return
    if a.quick:
        a.batch, a.steps, a.img_size, a.text_len = 2, 2, 224, 32
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {a.batch}, "
          f"{a.steps} timed steps, {a.img_size} px, text {a.text_len} tokens")
    rows = []
    for size in a.sizes:
        for stage in a.stages:
            cells = [(False, t) for t in a.tokenizers] if stage == "tokenizer" else [(False, None), (True, None)]
            for ckpt, tok in cells:
                job = dict(stage=stage, size=size, batch=a.batch, steps=a.steps, img_size=a.img_size,
                           ckpt=ckpt, text_len=a.text_len, **({"tokenizer": tok} if tok else {}))
                out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"{size} {stage} ckpt={ckpt}: failed\n{out.stderr[-2000:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(r)
                label = f"{stage} {tok}" if tok else stage
                print(f"{size:24s} {label:38s} ckpt={str(ckpt):5s} {r['samples_per_s']:8.2f} samples/s  "
                      f"forward+backward peak RSS {r['fwd_bwd_peak_mb']:7.0f} MiB, training peak "
                      f"{r['peak_rss_mb']:7.0f} MiB (model+optimiser {r['rss_after_warmup_mb']:.0f})", flush=True)
    print("\nactivation checkpointing (same run): forward+backward peak RSS and training speed")
    for size in a.sizes:
        for stage in ("masked", "contrastive"):
            pair = {r["ckpt"]: r for r in rows if r["size"] == size and r["stage"] == stage}
            if len(pair) == 2:
                off, on = pair[False], pair[True]
                saved = off["fwd_bwd_peak_mb"] - on["fwd_bwd_peak_mb"]
                print(f"{size:24s} {stage:11s} {off['fwd_bwd_peak_mb']:.0f} -> {on['fwd_bwd_peak_mb']:.0f} MiB "
                      f"(saves {saved:.0f} MiB, x{on['fwd_bwd_peak_mb'] / off['fwd_bwd_peak_mb']:.2f}), "
                      f"speed x{on['samples_per_s'] / off['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
