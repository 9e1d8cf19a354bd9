"""MUSK model speed on this machine: images/s, texts/s, fraction of matmul peak, loading memory.

Measured in one run: the fp32 matmul peak; the large config (random weights) at batch 4, 384 px,
single-scale and multiscale, fp32 and bf16; our path vs a naive path (both experts on every
token, explicit softmax attention); 100-token texts vs real captions (padding never computed);
peak RSS when loading a full-size checkpoint written here, vs a plain load-then-copy.

    python benchmarks/bench_model.py            # the README figures (about 10 minutes on 2 cores)
    python benchmarks/bench_model.py --quick    # smaller: base config, fewer repeats
"""
from __future__ import annotations

import argparse
import json
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


def image_rates(model, batch: int, repeats: int, fp32_peak: float, naive_sd=None) -> dict:
    """Images/s and fraction of the fp32 peak for each path and precision."""
    cfg = model.config
    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size)
    per_image = image_flops(cfg)
    out = {}
    with torch.no_grad():
        for prec in ("fp32", "bf16"):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if prec == "bf16" else torch.autocast("cpu", enabled=False)
            with ctx:
                single = best_time(lambda: model.encode_image(x), repeats)
                multi = best_time(lambda: model.encode_image(x, head=False, multiscale=True), max(1, repeats - 1))
            out[prec] = {
                "single_images_per_s": batch / single,
                "single_fraction_of_fp32_peak": batch * per_image / single / fp32_peak,
                "multiscale_images_per_s": batch / multi,
                "multiscale_fraction_of_fp32_peak": 5 * batch * per_image / multi / fp32_peak,
            }
        if naive_sd is not None:
            naive = best_time(lambda: reference_tokens(naive_sd, cfg, images=x), 1, warmup=0)
            ours = best_time(lambda: model.forward_tokens(images=x), 1, warmup=0)
            out["naive_vs_ours_speedup"] = naive / ours
            out["naive_images_per_s"] = batch / naive
    return out


def text_rates(model, batch: int, repeats: int, fp32_peak: float, naive_sd=None) -> dict:
    """Texts/s for fixed 100-token passes vs real captions (padding skipped), and their agreement."""
    tok = openmusk.get_tokenizer()
    texts = (CAPTIONS * (batch // len(CAPTIONS) + 1))[:batch]
    ids, pad = tok(texts, max_len=100)
    lengths = (pad == 0).sum(1).float()
    full_ids = torch.randint(4, 64000, (batch, 100))
    with torch.no_grad():
        fixed = best_time(lambda: model.forward_tokens(input_ids=full_ids)[:, 0], repeats)
        real = best_time(lambda: model.encode_text(ids, pad), repeats)
        reference_path = best_time(lambda: model.language_head(model.forward_tokens(input_ids=ids, padding_mask=pad)[:, 0]), 1)
        a = model.encode_text(ids, pad, normalize=False)
        b = model.language_head(model.forward_tokens(input_ids=ids, padding_mask=pad)[:, 0])
    per_text = encoder_flops(model.config, 100)  # 61.4 GFLOP for the large model
    out = {
        "fixed100_texts_per_s": batch / fixed,
        "fixed100_fraction_of_fp32_peak": batch * per_text / fixed / fp32_peak,
        "captions_mean_tokens": float(lengths.mean()),
        "captions_texts_per_s": batch / real,
        "captions_vs_fixed100_speedup": fixed / real,
        "captions_padded_to_100_texts_per_s": batch / reference_path,
        "captions_max_abs_diff_vs_padded": float((a - b).abs().max()),
    }
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
    args = ap.parse_args()
    torch.manual_seed(0)
    name = "musk_base_patch16_384" if args.quick else "musk_large_patch16_384"
    repeats = 1 if args.quick else args.repeats
    res = {"threads": torch.get_num_threads(), "config": name,
           "image_gflop": image_flops(openmusk.get_config(name)) / 1e9,
           "text100_gflop": encoder_flops(openmusk.get_config(name), 100) / 1e9}
    res["fp32_matmul_peak_gflops"] = matmul_peak(torch.float32) / 1e9
    res["bf16_matmul_peak_gflops"] = matmul_peak(torch.bfloat16) / 1e9
    model = random_model(name)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    res["images"] = image_rates(model, args.batch, repeats, res["fp32_matmul_peak_gflops"] * 1e9, sd)
    res["texts"] = text_rates(model, args.text_batch, repeats, res["fp32_matmul_peak_gflops"] * 1e9, sd)
    if not args.quick:
        res["loading"] = loading_memory(model)
    res["peak_rss_gb"] = peak_rss_bytes() / 1e9
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
