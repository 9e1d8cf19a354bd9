"""mSTAR speed and memory: stage-1 training steps/s for slides of 1k-50k patches (default part), the
genomic survival models' training steps/s at 1k and 10k tiles per slide (``--part genomic``: MCAT,
PORPOISE, MOTCat, CMTA), and report generation tokens/s, teacher-forced and greedy (``--part report``).

Each configuration (aggregator x patches per slide x patches sampled per step) runs
``pretrain_aggregator`` for two epochs in a fresh process on a synthetic cohort (HDF5 features in
the TRIDENT layout, real report text through a tiny MUSK, RNA-seq); the second epoch is timed and
the process's peak RSS (resource.getrusage) is reported. Ratios are against the smallest slide
with the same aggregator and sampling, measured in this run.

    python benchmarks/bench_mstar.py --quick        # ~1-2 min on 2 CPU cores
    python benchmarks/bench_mstar.py --part genomic --quick --threads 1   # one thread on a shared machine
    python benchmarks/bench_mstar.py --part report --quick --threads 1
    python benchmarks/bench_mstar.py --sizes 1000,10000,50000 --dim 2048 --device cuda
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import sys
import tempfile
from pathlib import Path


def _write_cohort(root: Path, n_patches: int, dim: int, patients: int) -> Path:
    """A cohort whose patients share one slide file of ``n_patches`` rows (reading cost stays real)."""
    import numpy as np
    import pandas as pd

    from openmusk.pretrain.mstar.synthetic import write_h5_features

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    h5 = root / f"slide_{n_patches}.h5"
    write_h5_features(h5, rng.normal(size=(n_patches, dim)).astype(np.float32), np.zeros((n_patches, 2)))
    words = ["adenocarcinoma", "squamous", "mucinous", "high grade", "low grade", "necrosis"]
    pd.DataFrame({"case_id": [f"p{i}" for i in range(patients)], "features": [h5.name] * patients,
                  "report": [f"Sections show {words[i % 6]} with {words[(i * 5) % 6]}." for i in range(patients)],
                  "split": ["train"] * patients}).to_csv(root / "cohort.csv", index=False)
    genes = rng.poisson(20, size=(patients, 200))
    pd.DataFrame(genes, columns=[f"G{i}" for i in range(200)]).assign(
        case_id=[f"p{i}" for i in range(patients)])[["case_id", *[f"G{i}" for i in range(200)]]].to_csv(
        root / "rna.csv", index=False)
    return root


def _run(args: tuple, queue: mp.Queue) -> None:
    """One configuration in this (child) process: seconds of the second epoch and peak RSS (MiB)."""
    root, aggregator, max_patches, batch, hidden, device, threads = args
    import torch

    torch.set_num_threads(threads)
    from openmusk.pretrain.mstar.config import AggregatorPretrainConfig
    from openmusk.pretrain.mstar.stage1 import pretrain_aggregator

    cfg = AggregatorPretrainConfig(table=str(root / "cohort.csv"), rna_table=str(root / "rna.csv"),
                                   output_dir=str(root / f"out_{aggregator}_{max_patches}"), aggregator=aggregator,
                                   hidden_dim=hidden, embed_dim=128, arch="musk_tiny_patch16_384", weights="random",
                                   n_genes=100, batch_size=batch, epochs=2, max_patches=max_patches,
                                   device=device, resume=False)
    hist = pretrain_aggregator(cfg, progress=False)["history"]
    queue.put((hist[1]["seconds"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def bench_genomic(sizes: list[int], dim: int, width: int, device: str, repeats: int) -> None:
    """Training steps/s (one slide + genomics per step, forward + backward + AdamW) of each genomic model."""
    import torch

    from common import best_time
    from openmusk.mil.genomic import GENOMIC_MODELS, build_genomic_model
    from openmusk.mil.losses import nll_survival_loss

    groups = {f"g{k}": list(range(k * 50, (k + 1) * 50)) for k in range(6)}  # six families, 300 genes
    print(f"genomic survival models: features {dim}-d, width {width}, 6 gene groups x 50, device {device}")
    print(f"{'model':>9} {'tiles':>7} {'steps/s':>8} {'vs 1st':>7}")
    for name in GENOMIC_MODELS:
        base = None
        for n in sizes:
            torch.manual_seed(0)
            net = build_genomic_model(name, dim, groups, 300, 4, width).to(device).train()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            batch = {"features": torch.randn(1, n, dim, device=device), "omics": torch.randn(1, 300, device=device),
                     "mask": torch.ones(1, n, dtype=torch.bool, device=device)}
            y, e = torch.zeros(1, dtype=torch.long, device=device), torch.ones(1, device=device)

            def step() -> None:
                out = net(batch)
                loss = nll_survival_loss(out["logits"], y, e) + out.get("aux_loss", 0.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()

            rate = 1 / best_time(step, repeats=repeats)
            base = base or rate
            print(f"{name:>9} {n:>7} {rate:>8.2f} {rate / base:>7.2f}")
            sys.stdout.flush()


def bench_report(tiles: int, dim: int, width: int, words: int, batch: int, device: str, repeats: int) -> None:
    """Report generation tokens/s: teacher-forced training tokens and greedy / beam-3 decoded tokens."""
    import torch

    from common import best_time
    from openmusk.mil.report_gen import ReportGenArch, ReportGenerator

    torch.manual_seed(0)
    arch = ReportGenArch(dim, 1000, width, 8, 64, 1, 1, 3, 128, words)
    model = ReportGenerator(arch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    feats = torch.randn(batch, tiles, dim, device=device)
    mask = torch.ones(batch, tiles, dtype=torch.bool, device=device)
    tokens = torch.randint(4, 1000, (batch, words + 2), device=device)
    tokens[:, 0], tokens[:, -1] = 1, 2

    def train_step() -> None:
        loss = model.loss(feats, mask, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    t_train = best_time(train_step, repeats=repeats)
    model.eval()
    print(f"report generation: {tiles} tiles x {dim}-d, width {width}, up to {words} words, device {device}")
    print(f"  teacher forcing: {batch * (words + 1) / t_train:9.1f} tokens/s (batch {batch})")
    for beam in (1, 3):  # tokens actually written (incl. <eos>) per second, encoder included
        made = [0]

        def decode() -> None:
            made[0] = sum(len(ids) + 1 for ids in model.generate(feats[:1], mask[:1], beam_size=beam, max_len=words))

        t = best_time(decode, repeats=repeats)
        print(f"  beam-{beam} decoding: {made[0] / t:9.1f} tokens/s ({made[0]} tokens, one slide)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="stage1", choices=["stage1", "genomic", "report"])
    p.add_argument("--sizes", default="1000,10000,50000", help="patches per slide (comma-separated)")
    p.add_argument("--max-patches", default="2048,0", help="patches sampled per slide per step; 0 = all")
    p.add_argument("--aggregators", default="abmil,transmil")
    p.add_argument("--dim", type=int, default=1024, help="patch feature size (2048 for MUSK multiscale)")
    p.add_argument("--hidden", type=int, default=256, help="aggregator width")
    p.add_argument("--patients", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="sizes 1000,10000,50000 with dim 256, 8 patients, ABMIL + "
                                                        "TransMIL sampled, ABMIL on all patches")
    args = p.parse_args()
    if args.part != "stage1":
        import torch

        torch.set_num_threads(args.threads)
    if args.part == "genomic":
        sizes = [1000, 10000] if args.quick or args.sizes == p.get_default("sizes") else \
            [int(s) for s in args.sizes.split(",")]
        bench_genomic(sizes, 256 if args.quick else args.dim, 64 if args.quick else 256, args.device,
                      1 if args.quick else 3)
        return 0
    if args.part == "report":
        bench_report(1000 if args.quick else 10000, 256 if args.quick else args.dim, 64 if args.quick else 256,
                     30 if args.quick else 100, 2 if args.quick else 8, args.device, 1 if args.quick else 3)
        return 0
    if args.quick:
        args.dim, args.patients, args.batch_size, args.hidden = 256, 8, 4, 128
    sizes = [int(s) for s in args.sizes.split(",")]
    configs = [(a, int(m)) for a in args.aggregators.split(",") for m in args.max_patches.split(",")]
    if args.quick:
        configs = [("abmil", 2048), ("abmil", 0), ("transmil", 2048)]
    ctx = mp.get_context("spawn")
    print(f"mSTAR stage 1: {args.patients} patients, batch {args.batch_size}, features {args.dim}-d, "
          f"aggregator width {args.hidden}, device {args.device}, {args.threads} threads")
    print(f"{'aggregator':>10} {'sampled':>8} {'patches':>8} {'steps/s':>8} {'vs 1st':>7} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        roots = {n: _write_cohort(Path(tmp) / f"n{n}", n, args.dim, args.patients) for n in sizes}
        for aggregator, max_patches in configs:
            base = None
            for n in sizes:
                queue = ctx.Queue()
                proc = ctx.Process(target=_run, args=((roots[n], aggregator, max_patches, args.batch_size,
                                                       args.hidden, args.device, args.threads), queue))
                proc.start()
                seconds, rss = queue.get()
                proc.join()
                rate = math.ceil(args.patients / args.batch_size) / seconds
                base = base or rate
                label = "all" if max_patches == 0 else str(max_patches)
                print(f"{aggregator:>10} {label:>8} {n:>8} {rate:>8.2f} {rate / base:>7.2f} {rss:>13.0f}")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
