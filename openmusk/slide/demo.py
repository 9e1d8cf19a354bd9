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

from openmusk.core.io import atomic_path
from openmusk.data.features_h5 import read_features
from openmusk.slide.config import ExtractConfig
from openmusk.slide.encode import extract_slide
from openmusk.slide.geojson import write_geojson
from openmusk.slide.heatmap import draw_heatmap, export_tile_scores, top_tiles_grid
from openmusk.slide.reader import open_slide
from openmusk.slide.tiling import TilingConfig, tile_slide, write_coords
from openmusk.slide.tissue import segment_tissue
from openmusk.slide.viewer import overlay_image, write_dzi, write_viewer

__all__ = ["DEMO_SLIDE", "TISSUE_PROMPTS", "PROMPT_TEMPLATES", "GENERIC_TEMPLATES", "DemoResult", "run_demo",
           "zero_shot_tiles", "read_class_prompts", "labels_prompts"]

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
GENERIC_TEMPLATES = PROMPT_TEMPLATES[:4]   # for the user's own classes (no organ named)


def labels_prompts(labels: str | list[str]) -> dict[str, list[str]]:
    """Classes from ``--labels "a,b,c"`` (each label is its own prompt)."""
    names = [s.strip() for s in labels.split(",")] if isinstance(labels, str) else [str(s).strip() for s in labels]
    names = [n for n in names if n]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"--labels needs at least two distinct comma-separated classes, got {names}")
    return {n: [n] for n in names}


def read_class_prompts(path: str | os.PathLike) -> tuple[dict[str, list[str]], list[str] | None]:
    """Classes and optional templates from a YAML/JSON file: ``{class: [prompt, ...]}`` or
    ``{classes: {class: [prompt, ...]}, templates: ["an H&E image of {c}.", ...]}``."""
    from openmusk.core.config import read_mapping

    path = Path(path)
    data = read_mapping(path)   # FileNotFoundError / ConfigError (a ValueError) name the file
    templates = None
    if isinstance(data, dict) and "classes" in data:
        templates = data.get("templates")
        data = data["classes"]
        if templates is not None and (not isinstance(templates, list) or
                                      not all(isinstance(t, str) and "{c}" in t for t in templates) or not templates):
            raise ValueError(f"{path}: 'templates' must be a list of strings with {{c}}, got {templates!r}")
    if not isinstance(data, dict) or len(data) < 2:
        raise ValueError(f"{path}: expected at least two classes, each with a list of prompts "
                         f"(class: [prompt, ...]), got {type(data).__name__}")
    prompts = {}
    for name, value in data.items():
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"{path}: class {name!r}: expected a prompt or a list of prompts, got {value!r}")
        prompts[str(name)] = [v.strip() for v in value]
    return prompts, templates

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
        img = F.normalize(model.vision_head(x).float(), dim=-1)   # float32 after a bf16 model too
        logits = model.similarity(img, torch.as_tensor(text_emb, device=device))
    return logits.float().softmax(dim=-1).cpu().numpy()


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
             log: Callable[[str], None] = print, prompts: dict[str, list[str]] | None = None,
             templates: list[str] | None = None) -> DemoResult:
    """Run the demo on the shipped slide (or ``slide_path``) and write ``out_dir/report.html``.

    ``weights``: a file or hub id, ``random[:ARCH]`` for the small random model, None for the
    released weights when they are cached (else random). ``prompts``: class -> prompts (default:
    the four skin classes), each put into every template (default: generic ones for your own
    classes, skin ones for the default classes).
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
        write_geojson(feat_dir / "tissue" / f"{slide.name}.geojson", tissue.geojson()["features"],
                      bounds=slide.dimensions)
        write_coords(feat_dir / "coords" / f"{slide.name}.h5", tiles)
        (feat_dir / f"{slide.name}.h5").unlink(missing_ok=True)   # always recompute in the demo
        extract_slide(slide_path, feat_dir, encoder, config, progress=progress)
        feats, coords, attrs = read_features(feat_dir / f"{slide.name}.h5")
        size0 = int(attrs["patch_size_level0"])

        prompts = prompts or TISSUE_PROMPTS
        templates = templates or (PROMPT_TEMPLATES if prompts is TISSUE_PROMPTS else GENERIC_TEMPLATES)
        classes = list(prompts)
        text_emb = zero_shot_weights(encoder, list(prompts.values()), templates)
        probs = zero_shot_tiles(encoder.model, feats, torch.from_numpy(text_emb))
        pred = probs.argmax(1)
        fractions = {c: float((pred == i).mean()) for i, c in enumerate(classes)}

        view, view_ds = slide.thumbnail(max_size=900)   # sharper than the segmentation thumbnail
        view.save(out / "thumbnail.png")
        mask = np.asarray(Image.fromarray(tissue.mask).resize(view.size, Image.NEAREST))
        _mask_overlay(np.asarray(view), mask).save(out / "tissue_mask.png")
        _tiles_overlay(np.asarray(view), coords, size0, view_ds).save(out / "tiles.png")
        for i, c in enumerate(classes):   # one scale (probability 0-1) for every class
            draw_heatmap(slide, coords, probs[:, i], size0, out / f"heatmap_{_slug(c)}.png",
                         label=f"P({c})", scale="probability", title=f"zero-shot P({c})")
            top_tiles_grid(slide, coords, probs[:, i], 5, size0, out / f"top_{_slug(c)}.png", tile_px=256)
        overlays = [(c, overlay_image(coords, probs[:, i], size0, slide.dimensions,
                                      out / "overlays" / f"{_slug(c)}.png").relative_to(out).as_posix())
                    for i, c in enumerate(classes)]
        write_viewer(out, write_dzi(slide, out, "slide"), overlays, title=slide.path.name)
        export_tile_scores(coords, probs, size0, out / "tile_scores.csv", names=classes,
                           classification=[classes[k] for k in pred])
        export_tile_scores(coords, probs, size0, out / "tile_scores.geojson", names=classes,
                           classification=[classes[k] for k in pred], bounds=slide.dimensions)
        shutil.copyfile(feat_dir / "tissue" / f"{slide.name}.geojson", out / "tissue.geojson")
        info = {"slide": slide.path.name, "size": slide.dimensions, "levels": slide.level_count,
                "mpp": slide.mpp, "tissue": tissue.fraction}
    seconds = time.perf_counter() - start
    report = _write_report(out, info, used, model_name, prompts, templates, probs, pred, fractions,
                           len(coords), tiling, seconds)
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


def _slug(name: str) -> str:
    """A file-name-safe form of a class name."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def _tiles_overlay(thumb: np.ndarray, coords: np.ndarray, size0: int, downsample: float) -> Image.Image:
    """The thumbnail with the tiles readable as tiles: overlapping tiles would draw a mesh, so the
    outlines show one non-overlapping layer (a stride of one tile side) and a dot marks every
    tile's centre."""
    img = Image.fromarray(thumb)
    draw = ImageDraw.Draw(img)
    s = size0 / downsample
    coords = np.asarray(coords).reshape(-1, 2)
    if len(coords):
        steps = np.diff(np.unique(coords[:, 0]))
        step = int(steps[steps > 0].min()) if (steps > 0).any() else size0   # the tiling's stride
        index = np.rint((coords - coords.min(0)) / step).astype(int)
        layer = (index % max(1, round(size0 / step)) == 0).all(1)   # one tile in every size0 x size0 cell
        for (x, y), outline in zip(coords, layer):
            cx, cy = x / downsample + s / 2, y / downsample + s / 2
            draw.ellipse([cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5], fill=(30, 30, 220))
            if outline:
                draw.rectangle([x / downsample, y / downsample, x / downsample + s, y / downsample + s],
                               outline=(30, 30, 220), width=2)
    return img


def _write_report(out: Path, info: dict, used: str, model_name: str, class_prompts: dict[str, list[str]],
                  templates: list[str], probs: np.ndarray, pred: np.ndarray, fractions: dict[str, float],
                  n_tiles: int, tiling: TilingConfig, seconds: float) -> Path:
    """report.html: warning banner if random, slide facts, images, per-class table."""
    e = html.escape
    classes = list(class_prompts)
    rows = "".join(
        f"<tr><td>{e(c)}</td><td>{fractions[c] * 100:.1f}%</td><td>{probs[:, i].mean():.3f}</td>"
        f"<td>{probs[:, i].max():.3f}</td><td><a href='heatmap_{_slug(c)}.png'><img src='heatmap_{_slug(c)}.png' "
        f"width='520'></a></td></tr><tr><td colspan='5'>top 5 tiles for {e(c)} (P above each; 256 px = "
        f"{tiling.tile_size} px at {tiling.mpp} µm/px)<br><a href='top_{_slug(c)}.png'>"
        f"<img src='top_{_slug(c)}.png' width='1280'></a></td></tr>" for i, c in enumerate(classes))
    banner = (f"<div class='warn'><b>WARNING:</b> {e(RANDOM_WARNING)}</div>" if used == "random"
              else f"<div class='ok'>Weights: {e(used)}</div>")
    prompts = "".join(f"<li><b>{e(c)}</b>: {e(', '.join(s))}</li>" for c, s in class_prompts.items())
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
<p class="ok"><a href="viewer.html"><b>Open the slide viewer</b></a>: pan and zoom the slide at full
resolution with each class's heatmap as a switchable overlay (works from this folder, offline).</p>
<figure><img src="thumbnail.png" height="420"><figcaption>thumbnail</figcaption></figure>
<figure><img src="tissue_mask.png" height="420"><figcaption>tissue mask (tissue.geojson)</figcaption></figure>
<figure><img src="tiles.png" height="420"><figcaption>tiles: one non-overlapping layer outlined, a dot
at every tile's centre</figcaption></figure>
<h2>Zero-shot tissue classes</h2>
<p>Prompts (each in {len(templates)} templates: {e(' | '.join(templates))}; embeddings averaged):</p>
<ul>{prompts}</ul>
<p>Every heatmap uses the same scale, the probability 0-1 (viridis: dark purple 0, yellow 1), so one
colour means one probability across classes.</p>
<table><tr><th>class</th><th>tiles predicted</th><th>mean P</th><th>max P</th><th>heatmap</th></tr>
{rows}</table>
<p>Per-tile probabilities: <a href="tile_scores.csv">tile_scores.csv</a>,
<a href="tile_scores.geojson">tile_scores.geojson</a> (QuPath: File &gt; Import objects).
Features: <code>features/</code> (HDF5, TRIDENT/CLAM layout).</p>
</body></html>
"""
    path = out / "report.html"
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(page)
    return path
