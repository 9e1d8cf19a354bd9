"""``openmusk demo``: the whole-slide pipeline on the shipped real slide, ending in an HTML report.

Segment tissue, tile at 20x, extract multiscale MUSK features, score every tile zero-shot against
a few skin tissue prompts, draw heatmaps and top tiles, and write ``report.html``. With the released
weights the tissue map is meaningful; without them a small randomly initialised model runs the
same pipeline and the terminal and the report say so loudly.
"""
from __future__ import annotations

import html
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from openmusk.core.io import atomic_path, write_json
from openmusk.data.features_h5 import read_features
from openmusk.slide.config import ExtractConfig
from openmusk.slide.encode import extract_slide
from openmusk.slide.heatmap import draw_heatmap, export_tile_scores, top_tiles_grid
from openmusk.slide.reader import open_slide
from openmusk.slide.tiling import TilingConfig, tile_slide, write_coords
from openmusk.slide.tissue import segment_tissue

__all__ = ["DEMO_SLIDE", "TISSUE_PROMPTS", "PROMPT_TEMPLATES", "DemoResult", "run_demo", "zero_shot_tiles"]

DEMO_SLIDE = Path(__file__).resolve().parents[1] / "assets" / "demo" / "cmu_small_region.svs"
RANDOM_MODEL = "musk_tiny_patch16_384"

# class -> synonyms; every synonym is put into every template and the embeddings averaged
TISSUE_PROMPTS: dict[str, list[str]] = {
    "epidermis": ["epidermis", "stratified squamous epithelium", "keratinocytes of the skin"],
    "dermis": ["dermis", "dense connective tissue", "collagen fibers of the dermis"],
    "adipose": ["adipose tissue", "fat cells", "subcutaneous fat"],
    "background": ["background", "empty glass slide", "blank white area"],
}
PROMPT_TEMPLATES = [
    "{c}.",
    "an H&E image of {c}.",
    "a histopathology image of {c}.",
    "a photomicrograph showing {c}.",
    "an image of {c} from a skin biopsy.",
]

RANDOM_WARNING = (
    "RELEASED MUSK WEIGHTS NOT FOUND: this demo ran a small RANDOMLY INITIALISED model "
    f"({RANDOM_MODEL}). The pipeline is real; the tissue labels and heatmaps are NOT meaningful. "
    "Pass --weights PATH or get the weights from the hub (hf_hub:xiangjx/musk) for real results."
)


@dataclass
class DemoResult:
    """Where the demo wrote its report and what it found."""

    report: Path
    weights: str                      # the weights file used, or "random"
    model: str
    n_tiles: int
    class_fractions: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def zero_shot_tiles(model: torch.nn.Module, features: np.ndarray, text_emb: torch.Tensor) -> np.ndarray:
    """Class probabilities (N, C) of tiles from their multiscale features.

    The first D values of a multiscale feature are the scale-1 CLS, so the retrieval embedding is
    ``normalize(vision_head(features[:, :D]))``: no second pass over the tiles.
    """
    d = int(model.config.embed_dim)
    device = next(model.parameters()).device
    x = torch.as_tensor(features[:, :d], dtype=torch.float32, device=device)
    with torch.inference_mode():
        img = F.normalize(model.vision_head(x), dim=-1)
        logits = model.similarity(img, torch.as_tensor(text_emb, device=device))
    return logits.softmax(dim=-1).cpu().numpy()


def _demo_encoder(weights: str | None, device: str | None, precision: str) -> tuple[Any, str, str]:
    """(encoder, weights used, model name): the given weights, else the released ones if cached, else
    the small random model. An explicit request never falls back silently."""
    from openmusk.encoders import load_encoder
    from openmusk.model import DEFAULT_WEIGHTS, resolve_weights, weights_available

    if weights is None:
        weights = DEFAULT_WEIGHTS if weights_available(DEFAULT_WEIGHTS) else "random"   # hub cache only
    if str(weights).startswith("random"):
        arch = str(weights).partition(":")[2] or RANDOM_MODEL
        torch.manual_seed(0)   # the random fallback is the same model on every run
        enc = load_encoder("musk", weights="random", arch=arch, device=device, precision=precision)
        return enc, "random", arch
    path = resolve_weights(weights)
    return load_encoder("musk", weights=path, device=device, precision=precision), path, "musk"


def run_demo(out_dir: str | os.PathLike, weights: str | None = None, slide_path: str | os.PathLike | None = None,
             overlap: float = 0.5, batch_size: int = 16, num_workers: int = 0, precision: str = "auto",
             device: str | None = None, slide_mpp: float | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo on the shipped slide (or ``slide_path``) and write ``out_dir/report.html``.

    ``weights``: a file or hub id, ``random[:ARCH]`` for the small random model, None for the
    released weights when they are cached (else random).
    """
    from openmusk.encoders import zero_shot_weights

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide_path = Path(slide_path or DEMO_SLIDE)
    encoder, used, model_name = _demo_encoder(weights, device, precision)
    if used == "random":
        banner = "!" * 100
        log(f"{banner}\n{RANDOM_WARNING}\n{banner}")
    else:
        log(f"using weights {used}")

    tiling = TilingConfig(overlap=overlap)
    config = ExtractConfig(batch_size=batch_size, num_workers=num_workers, slide_mpp=slide_mpp, tiling=tiling)
    feat_dir = out / "features"
    with open_slide(slide_path, default_mpp=slide_mpp) as slide:
        log(f"slide {slide.path.name}: {slide.dimensions[0]} x {slide.dimensions[1]} px, "
            f"{slide.level_count} level(s), {slide.mpp:.3f} µm/px")
        tissue, _ = segment_tissue(slide, config.segmenter, mpp=config.segment_mpp)
        tiles = tile_slide(slide, tissue, tiling)
        log(f"tissue covers {100 * tissue.fraction:.1f}% of the slide; {len(tiles)} tiles of "
            f"{tiling.tile_size} px at {tiling.mpp} µm/px ({int(100 * overlap)}% overlap)")
        write_json(feat_dir / "tissue" / f"{slide.name}.geojson", tissue.geojson())
        write_coords(feat_dir / "coords" / f"{slide.name}.h5", tiles)
        (feat_dir / f"{slide.name}.h5").unlink(missing_ok=True)   # always recompute in the demo
        extract_slide(slide_path, feat_dir, encoder, config, progress=progress)
        feats, coords, attrs = read_features(feat_dir / f"{slide.name}.h5")
        size0 = int(attrs["patch_size_level0"])

        classes = list(TISSUE_PROMPTS)
        text_emb = zero_shot_weights(encoder, list(TISSUE_PROMPTS.values()), PROMPT_TEMPLATES)
        probs = zero_shot_tiles(encoder.model, feats, torch.from_numpy(text_emb))
        pred = probs.argmax(1)
        fractions = {c: float((pred == i).mean()) for i, c in enumerate(classes)}

        view, view_ds = slide.thumbnail(max_size=900)   # sharper than the segmentation thumbnail
        view.save(out / "thumbnail.png")
        mask = np.asarray(Image.fromarray(tissue.mask).resize(view.size, Image.NEAREST))
        _mask_overlay(np.asarray(view), mask).save(out / "tissue_mask.png")
        _tiles_overlay(np.asarray(view), coords, size0, view_ds).save(out / "tiles.png")
        for i, c in enumerate(classes):
            draw_heatmap(slide, coords, probs[:, i], size0, out / f"heatmap_{c}.png",
                         label=f"P({c})", vmin=0.0, vmax=float(max(probs[:, i].max(), 1e-6)),
                         title=f"zero-shot P({c})")
            top_tiles_grid(slide, coords, probs[:, i], 5, size0, out / f"top_{c}.png")
        export_tile_scores(coords, probs, size0, out / "tile_scores.csv", names=classes,
                           classification=[classes[k] for k in pred])
        export_tile_scores(coords, probs, size0, out / "tile_scores.geojson", names=classes,
                           classification=[classes[k] for k in pred])
        shutil.copyfile(feat_dir / "tissue" / f"{slide.name}.geojson", out / "tissue.geojson")
        info = {"slide": slide.path.name, "size": slide.dimensions, "levels": slide.level_count,
                "mpp": slide.mpp, "tissue": tissue.fraction}
    seconds = time.perf_counter() - start
    report = _write_report(out, info, used, model_name, classes, probs, pred, fractions, len(coords),
                           tiling, seconds)
    log(f"report: {report}")
    if used == "random":
        log("(random weights: see the warning above)")
    return DemoResult(report, used, model_name, len(coords), fractions, seconds)


def _mask_overlay(thumb: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The thumbnail with background dimmed and the tissue outline in green."""
    from scipy import ndimage

    img = thumb.astype(np.float32)
    img[~mask] = img[~mask] * 0.35 + 255 * 0.15
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    img[edge] = (0, 200, 0)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _tiles_overlay(thumb: np.ndarray, coords: np.ndarray, size0: int, downsample: float) -> Image.Image:
    """The thumbnail with every tile's outline."""
    img = Image.fromarray(thumb)
    draw = ImageDraw.Draw(img)
    for x, y in coords:
        x0, y0 = x / downsample, y / downsample
        s = size0 / downsample
        draw.rectangle([x0, y0, x0 + s, y0 + s], outline=(30, 30, 220))
    return img


def _write_report(out: Path, info: dict, used: str, model_name: str, classes: list[str], probs: np.ndarray,
                  pred: np.ndarray, fractions: dict[str, float], n_tiles: int, tiling: TilingConfig,
                  seconds: float) -> Path:
    """report.html: warning banner if random, slide facts, images, per-class table."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(c)}</td><td>{fractions[c] * 100:.1f}%</td><td>{probs[:, i].mean():.3f}</td>"
        f"<td>{probs[:, i].max():.3f}</td><td><img src='heatmap_{e(c)}.png' width='360'></td>"
        f"<td><img src='top_{e(c)}.png' width='420'></td></tr>" for i, c in enumerate(classes))
    banner = (f"<div class='warn'><b>WARNING:</b> {e(RANDOM_WARNING)}</div>" if used == "random"
              else f"<div class='ok'>Weights: {e(used)}</div>")
    prompts = "".join(f"<li><b>{e(c)}</b>: {e(', '.join(s))}</li>" for c, s in TISSUE_PROMPTS.items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>openmusk demo: {e(info['slide'])}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto}}
.warn{{background:#c00;color:#fff;padding:1em;font-size:1.2em}} .ok{{background:#dfd;padding:.5em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}
figure{{display:inline-block;margin:.5em}}</style></head><body>
<h1>openmusk demo: whole-slide zero-shot tissue map</h1>
{banner}
<p>Slide <b>{e(info['slide'])}</b>: {info['size'][0]} x {info['size'][1]} px, {info['levels']} level(s),
{info['mpp']:.3f} µm/px; tissue {info['tissue'] * 100:.1f}% of the area. Model <b>{e(model_name)}</b>.
{n_tiles} tiles of {tiling.tile_size} px at {tiling.mpp} µm/px, {int(tiling.overlap * 100)}% overlap,
min. tissue {tiling.min_tissue:.0%}. Total time {seconds:.1f} s.</p>
<figure><img src="thumbnail.png" height="420"><figcaption>thumbnail</figcaption></figure>
<figure><img src="tissue_mask.png" height="420"><figcaption>tissue mask (tissue.geojson)</figcaption></figure>
<figure><img src="tiles.png" height="420"><figcaption>tiles</figcaption></figure>
<h2>Zero-shot tissue classes</h2>
<p>Prompts (each in {len(PROMPT_TEMPLATES)} templates, embeddings averaged):</p><ul>{prompts}</ul>
<table><tr><th>class</th><th>tiles predicted</th><th>mean P</th><th>max P</th><th>heatmap</th>
<th>top 5 tiles</th></tr>{rows}</table>
<p>Per-tile probabilities: <a href="tile_scores.csv">tile_scores.csv</a>,
<a href="tile_scores.geojson">tile_scores.geojson</a> (QuPath: File &gt; Import objects).
Features: <code>features/</code> (HDF5, TRIDENT/CLAM layout).</p>
</body></html>
"""
    path = out / "report.html"
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(page)
    return path
