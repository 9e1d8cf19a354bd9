"""MUSK model speed on this machine: images/s, texts/s, fraction of matmul peak, loading memory.

Measured in one run: the fp32 matmul peak right before and right after every workload (a fraction
of peak is taken against their mean, and a warning is printed when they differ by more than 10%:
the machine's speed changed under the workload and the figure is not trustworthy; the load
average is printed too); the large config (random weights) at batch 4, 384 px,
single-scale and multiscale, fp32 and bf16; our path vs a naive path (both experts on every
token, explicit softmax attention); 100-token texts vs real captions (padding never computed);
peak RSS when loading a full-size checkpoint written here, vs a plain load-then-copy.

    python benchmarks/bench_model.py            # the README figures (about 10 minutes on 2 cores)
    python benchmarks/bench_model.py --quick    # smaller: base config, fewer repeats
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, matmul_peak, peak_rss_bytes  # noqa: E402

import openmusk  # noqa: E402
from openmusk.model.reference import reference_tokens  # noqa: E402

CAPTIONS = [
    "H&E image of lung adenocarcinoma.", "Normal colon mucosa.", "Tumour-infiltrating lymphocytes in stroma.",
    "High-grade serous carcinoma with papillary architecture and marked nuclear atypia.",
    "Squamous epithelium overlying dermis.", "Necrosis.", "Invasive ductal carcinoma, grade 3, with lymphovascular invasion.",
    "Benign prostatic glands.", "Mitotic figures are frequent.", "Adipose tissue.",
    "Metastatic melanoma in a lymph node with pigment-laden macrophages.", "Clear cell renal cell carcinoma.",
]


def encoder_flops(cfg: openmusk.MuskConfig, tokens: int) -> float:
    """Matmul FLOPs of one sequence through the encoder: projections, FFN and attention products."""
    d, f = cfg.embed_dim, cfg.ffn_dim
    return 2.0 * cfg.depth * (tokens * (4 * d * d + 2 * d * f) + 2 * tokens * tokens * d)


def image_flops(cfg: openmusk.MuskConfig) -> float:
    """One image: the encoder over P+1 tokens plus the patch embedding (382.1 GFLOP for the large model)."""
    patch = 2.0 * cfg.num_patches * 3 * cfg.patch_size ** 2 * cfg.embed_dim
    return encoder_flops(cfg, cfg.num_patches + 1) + patch


def random_model(name: str) -> openmusk.Musk:
    """A model of the named size with cheap random weights (normal 0.02, LayerNorm ones)."""
    cfg = openmusk.get_config(name)
    with torch.device("meta"):
        model = openmusk.Musk(cfg)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.ones_like(p)) if (".A.weight" in n or ".B.weight" in n) and p.ndim == 1 else p.normal_(0, 0.02)
    return model.eval()


TRUST_SPREAD = 0.10   # peaks before and after a workload further apart than this: not trustworthy


def bracketed(name: str, fn, repeats: int, flops: float, log: list) -> tuple[float, float]:
    """(seconds, fraction of the fp32 matmul peak) of ``fn``, the peak measured right before and
    right after it; the two peaks, their spread and the load average go to ``log``."""
    before = matmul_peak(torch.float32)
    seconds = best_time(fn, repeats)
    after = matmul_peak(torch.float32)
    mean = (before + after) / 2
    spread = abs(before - after) / mean
    log.append({"workload": name, "peak_before_gflops": before / 1e9, "peak_after_gflops": after / 1e9,
                "peak_spread": spread, "load_average_1min": os.getloadavg()[0],
                "fraction_of_mean_peak": flops / seconds / mean})
    if spread > TRUST_SPREAD:
        print(f"WARNING: {name}: matmul peak {before / 1e9:.0f} GFLOP/s before, {after / 1e9:.0f} after "
              f"({spread:.0%} apart): this machine's speed changed, the figure is not trustworthy",
              file=sys.stderr)
    return seconds, flops / seconds / mean


def image_rates(model, batch: int, repeats: int, log: list, naive_sd=None, bf16: bool = True) -> dict:
    """Images/s and fraction of the fp32 peak for each path and precision; the multiscale pass is
    split into its parts (resize and crop of the views, the encoder over the 5 x B views)."""
    import torch.nn.functional as F

    from openmusk.model.inference import cast_for_inference

    cfg = model.config
    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size)
    per_image = image_flops(cfg)
    out = {}
    with torch.no_grad():
        for prec in ("fp32", "bf16") if bf16 else ("fp32",):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else torch.autocast("cpu", enabled=False)
            with ctx:
                single, single_frac = bracketed(f"{prec} single-scale", lambda: model.encode_image(x), repeats,
                                                batch * per_image, log)
                multi, multi_frac = bracketed(f"{prec} multiscale", lambda: model.encode_image(
                    x, head=False, multiscale=True), max(1, repeats - 1), 5 * batch * per_image, log)
            out[prec] = {
                "single_images_per_s": batch / single,
                "single_fraction_of_fp32_peak": single_frac,
                "multiscale_images_per_s": batch / multi,
                "multiscale_fraction_of_fp32_peak": multi_frac,
            }
        s = cfg.img_size

        def views() -> torch.Tensor:
            """The 5 views of every image: itself and the 4 crops of its 2x bicubic upscale."""
            big = F.interpolate(x, size=(2 * s, 2 * s), mode="bicubic", align_corners=False)
            return torch.cat([x, *(big[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] for i in (0, 1) for j in (0, 1))])

        crops = views()
        out["multiscale_parts_fp32"] = {
            "resize_and_crop_s": best_time(views, repeats),
            "encoder_on_5B_views_s": best_time(lambda: model.encode_image_tokens(crops), max(1, repeats - 1)),
            "encoder_5_passes_of_B_s": best_time(lambda: [model.encode_image_tokens(c) for c in crops.split(batch)],
                                                 max(1, repeats - 1)),
        }
        if bf16:
            fast = cast_for_inference(copy.deepcopy(model), "bf16")
            cast_s, cast_frac = bracketed("bf16 cast once, single-scale", lambda: fast.encode_image(x), repeats,
                                          batch * per_image, log)
            out["bf16_cast_once"] = {"single_images_per_s": batch / cast_s, "single_fraction_of_fp32_peak": cast_frac}
            del fast
        if naive_sd is not None:
            naive = best_time(lambda: reference_tokens(naive_sd, cfg, images=x), 1, warmup=0)
            ours = best_time(lambda: model.forward_tokens(images=x), 1, warmup=0)
            out["naive_vs_ours_speedup"] = naive / ours
            out["naive_images_per_s"] = batch / naive
    return out


def text_rates(model, batch: int, repeats: int, log: list, naive_sd=None, bf16: bool = True) -> dict:
    """Texts/s for fixed 100-token passes vs real captions (padding skipped), and their agreement."""
    tok = openmusk.get_tokenizer()
    texts = (CAPTIONS * (batch // len(CAPTIONS) + 1))[:batch]
    ids, pad = tok(texts, max_len=100)
    lengths = (pad == 0).sum(1).float()
    full_ids = torch.randint(4, 64000, (batch, 100))
    per_text = encoder_flops(model.config, 100)  # 61.4 GFLOP for the large model
    with torch.no_grad():
        fixed, fixed_frac = bracketed("fp32 texts 100 tokens", lambda: model.forward_tokens(input_ids=full_ids)[:, 0],
                                      repeats, batch * per_text, log)
        real = best_time(lambda: model.encode_text(ids, pad), repeats)
        reference_path = best_time(lambda: model.language_head(model.forward_tokens(input_ids=ids, padding_mask=pad)[:, 0]), 1)
        a = model.encode_text(ids, pad, normalize=False)
        b = model.language_head(model.forward_tokens(input_ids=ids, padding_mask=pad)[:, 0])
    out = {
        "fixed100_texts_per_s": batch / fixed,
        "fixed100_fraction_of_fp32_peak": fixed_frac,
        "captions_mean_tokens": float(lengths.mean()),
        "captions_texts_per_s": batch / real,
        "captions_vs_fixed100_speedup": fixed / real,
        "captions_padded_to_100_texts_per_s": batch / reference_path,
        "captions_max_abs_diff_vs_padded": float((a - b).abs().max()),
    }
    if bf16:
        from openmusk.model.inference import cast_for_inference

        fast = cast_for_inference(copy.deepcopy(model), "bf16")
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                auto, _ = bracketed("bf16 autocast texts 100 tokens",
                                    lambda: model.forward_tokens(input_ids=full_ids)[:, 0], repeats, batch * per_text, log)
            cast, _ = bracketed("bf16 cast-once texts 100 tokens", lambda: fast.forward_tokens(input_ids=full_ids)[:, 0],
                                repeats, batch * per_text, log)
        out["bf16_fixed100_autocast_texts_per_s"] = batch / auto
        out["bf16_fixed100_cast_once_texts_per_s"] = batch / cast
        out["bf16_cast_once_vs_autocast_speedup"] = auto / cast
        del fast
    if naive_sd is not None:
        naive = best_time(lambda: reference_tokens(naive_sd, model.config, input_ids=full_ids), 1, warmup=0)
        out["naive_vs_ours_fixed100_speedup"] = naive / fixed
    return out


LOAD_SCRIPT = r"""
import json, sys, resource, torch
sys.path.insert(0, {bench!r})
from common import rss_bytes, hwm_bytes
import openmusk
path, mode = {path!r}, {mode!r}
before = rss_bytes()
if mode == "openmusk":
    model = openmusk.create_model(pretrained=path)
else:  # the common pattern: build the model, read the whole file, copy into the module
    from safetensors.torch import load_file
    with torch.device("meta"):
        model = openmusk.Musk(openmusk.get_config("musk_large_patch16_384"))
    model.to_empty(device="cpu")
    before = rss_bytes()
    sd = load_file(path)
    model.load_state_dict(sd)
    del sd
after_load = hwm_bytes()
with torch.no_grad():  # touch every weight once
    model.encode_image(torch.randn(1, 3, 384, 384))
    model.encode_text(torch.tensor([[0, 100, 2]]))
print(json.dumps(dict(before=before, after_load=after_load, after_forward=hwm_bytes())))
"""


def loading_memory(model) -> dict:
    """Peak RSS of a fresh process loading the checkpoint, as a multiple of the fp32 weight bytes."""
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    out = {"fp32_weight_bytes": weight_bytes}
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "model.safetensors")
        openmusk.save_checkpoint(model, path)
        for mode in ("openmusk", "load_then_copy"):
            code = LOAD_SCRIPT.format(bench=str(Path(__file__).resolve().parent), path=path, mode=mode)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            out[mode] = {"peak_over_baseline_after_load": (m["after_load"] - m["before"]) / weight_bytes,
                         "peak_over_baseline_after_forward": (m["after_forward"] - m["before"]) / weight_bytes,
                         "baseline_rss_bytes": m["before"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="base config, fewer repeats, no loading test")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--text-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--config", default=None, help="model config (default: large; base with --quick), e.g. "
                                                   "musk_tiny_patch16_384 to check the script in seconds")
    args = ap.parse_args()
    torch.manual_seed(0)
    name = args.config or ("musk_base_patch16_384" if args.quick else "musk_large_patch16_384")
    repeats = 1 if args.quick else args.repeats
    res = {"threads": torch.get_num_threads(), "config": name,
           "image_gflop": image_flops(openmusk.get_config(name)) / 1e9,
           "text100_gflop": encoder_flops(openmusk.get_config(name), 100) / 1e9}
    res["load_average_at_start"] = os.getloadavg()
    print(f"load average {res['load_average_at_start']} on {os.cpu_count()} CPUs", file=sys.stderr)
    small_bf16, small_fp32 = matmul_peak(torch.bfloat16, n=512, repeats=2), matmul_peak(torch.float32, n=512, repeats=2)
    fast_bf16 = small_bf16 > 0.5 * small_fp32   # CPUs without native bf16 emulate it hundreds of times slower
    res["bf16_matmul_peak_gflops"] = (matmul_peak(torch.bfloat16) if fast_bf16 else small_bf16) / 1e9
    if not fast_bf16:
        res["bf16_skipped"] = f"bf16 matmul at {small_bf16 / 1e9:.2f} GFLOP/s vs fp32 {small_fp32 / 1e9:.1f}: no native bf16"
        print(f"note: {res['bf16_skipped']}; bf16 workloads skipped", file=sys.stderr)
    model = random_model(name)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    log: list = []
    res["images"] = image_rates(model, args.batch, repeats, log, sd, bf16=fast_bf16)
    res["texts"] = text_rates(model, args.text_batch, repeats, log, sd, bf16=fast_bf16)
    res["peaks_around_each_workload"] = log
    res["untrustworthy"] = [r["workload"] for r in log if r["peak_spread"] > TRUST_SPREAD]
    res["load_average_at_end"] = os.getloadavg()
    if not args.quick:
        res["loading"] = loading_memory(model)
    res["peak_rss_gb"] = peak_rss_bytes() / 1e9
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
