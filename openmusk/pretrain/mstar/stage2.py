"""mSTAR stage 2: self-taught training of the patch encoder (MUSK's vision side).

Per step and slide, ``patches_per_slide`` tiles are read from the slide at the positions stored in
its feature file. An EMA teacher (a slowly moving copy of the encoder) extracts their features,
which join ``context_patches`` cached features of the same slide; the frozen stage-1 aggregator
re-embeds that bag, and its output tokens for the sampled tiles are the targets. The student
encoder, through a linear head, learns to reproduce them (cosine or smooth-L1 loss); the teacher
follows the student by EMA. Memory is bounded by the tiles per step, not by slide size. The
trained encoder is written with ``openmusk.model.save_checkpoint`` (loadable by ``load_checkpoint``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmusk.core.io import save_figure, write_json
from openmusk.data.features_h5 import FeaturesFileError, features_shape, read_coords_file, read_feature_rows
from openmusk.pretrain.mstar.config import SelfTaughtConfig
from openmusk.pretrain.mstar.model import MstarPretrained, aggregator_tokens

__all__ = ["self_taught", "SlideTiles", "load_slide_table", "patch_features", "ema_update",
           "PATCH_ENCODER_WEIGHTS"]

PATCH_ENCODER_WEIGHTS = "patch_encoder.safetensors"


@dataclass
class SlideTiles:
    """One slide of the stage-2 table: the slide file, its feature file, tile positions and size."""

    case_id: str
    slide: Path
    features: Path
    coords: np.ndarray
    size0: int  # tile side in level-0 pixels


def load_slide_table(table: str | Path, feature_dim: int) -> tuple[list[SlideTiles], list[str]]:
    """Rows ``case_id, slide, features`` -> usable slides and the problems of the rows skipped."""
    import pandas as pd

    table = Path(table)
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    for col in ("case_id", "slide", "features"):
        if col not in df.columns:
            raise ValueError(f"{table}: missing column {col!r} (columns: {list(df.columns)})")
    slides, problems = [], []
    for row_no, row in enumerate(df.itertuples(index=False), start=2):
        slide = Path(row.slide) if Path(row.slide).is_absolute() else table.parent / row.slide
        feats = Path(row.features) if Path(row.features).is_absolute() else table.parent / row.features
        where = f"{table}:{row_no} ({row.case_id})"
        if not slide.is_file():
            problems.append(f"{where}: slide file {slide} not found")
            continue
        try:
            shape = features_shape(feats)
            coords, attrs = read_coords_file(feats)
        except FeaturesFileError as e:
            problems.append(f"{where}: cannot read features/coords ({e})")
            continue
        if shape[1] != feature_dim:
            problems.append(f"{where}: {feats} has {shape[1]}-d features; the aggregator expects {feature_dim}-d")
            continue
        size0 = int(attrs.get("patch_size_level0", attrs.get("patch_size", 0)))
        if size0 <= 0:
            problems.append(f"{where}: {feats} coords have no 'patch_size_level0' attribute")
            continue
        slides.append(SlideTiles(str(row.case_id), slide, feats, coords, size0))
    return slides, problems


def patch_features(encoder: nn.Module, images: torch.Tensor, multiscale: bool) -> torch.Tensor:
    """The features ``openmusk slide extract`` stores: CLS without head or normalisation (2D if multiscale)."""
    return encoder.encode_image(images, head=False, normalize=False, multiscale=multiscale)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1 - momentum)


class _TileReader:
    """Open slides on demand and cut tiles, resized to the encoder's input by MUSK's transform."""

    def __init__(self, img_size: int):
        from openmusk.data.transforms import get_transform

        self.transform = get_transform(img_size)
        self.open: dict[Path, object] = {}

    def __call__(self, slide: SlideTiles, rows: np.ndarray) -> torch.Tensor:
        from openmusk.slide import open_slide

        if slide.slide not in self.open:
            self.open[slide.slide] = open_slide(slide.slide)
        s = self.open[slide.slide]
        tiles = [self.transform(s.read_level(tuple(slide.coords[r]), 0, (slide.size0, slide.size0))) for r in rows]
        return torch.stack(tiles)


def _loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between student predictions and aggregator tokens."""
    if kind == "cosine":
        return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target.float())
    raise ValueError(f"loss must be 'cosine' or 'smooth_l1', got {kind!r}")


def _plot(history: list[dict], path: Path) -> None:
    """Self-taught loss per logged step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set(xlabel="step", ylabel="loss to aggregator tokens", title="mSTAR stage 2 (self-taught)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def self_taught(cfg: SelfTaughtConfig, progress: bool = True) -> dict:
    """Run stage 2 as configured; returns metrics (also in ``output_dir/metrics.json``)."""
    from tqdm.auto import tqdm

    from openmusk.core.config import config_to_dict
    from openmusk.core.optim import param_groups
    from openmusk.core.runtime import autocast, resolve_device, resolve_precision
    from openmusk.encoders import load_encoder
    from openmusk.mil.trainer import Optimization, load_resume, save_resume
    from openmusk.model import save_checkpoint

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)  # once, not per step
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pre = MstarPretrained(cfg.stage1_dir, device=device)
    aggregator = pre.model.aggregator.eval().requires_grad_(False)
    in_dim, hidden = pre.model.arch.in_dim, pre.model.arch.hidden_dim
    slides, problems = load_slide_table(cfg.table, in_dim)
    if not slides:
        raise ValueError(f"{cfg.table}: no usable slide; problems: {problems}")
    # the student comes from the encoder registry: MUSK, whose vision side is trained and exported
    encoder = load_encoder("musk" if cfg.multiscale else "musk_singlescale", weights=cfg.weights or "random",
                           arch=cfg.arch, device=device)
    student, width = encoder.model, encoder.dim("probe")
    if width != in_dim:
        raise ValueError(f"the encoder gives {width}-d features (multiscale={cfg.multiscale}) but the stage-1 "
                         f"aggregator takes {in_dim}-d: use the encoder and setting that extracted the features")
    student.train().set_grad_checkpointing(cfg.grad_checkpointing)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    head = nn.Linear(width, hidden).to(device)
    opt = Optimization(param_groups(student, cfg.weight_decay) + param_groups(head, cfg.weight_decay, depth=0),
                       cfg.lr, cfg.steps, cfg.warmup_steps, betas=(0.9, 0.95), clip_norm=3.0,
                       precision=cfg.precision, device=device)
    history: list[dict] = []
    start = 0
    resume_path = out / "resume.pt"
    state = load_resume(resume_path, device) if cfg.resume else None
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state)
        start, history = int(state["step"]), list(state["history"])
    reader = _TileReader(cfg.img_size)
    window: list[float] = []
    active = list(range(len(slides)))
    t0 = time.time()

    def save_state(step: int) -> None:
        save_resume(resume_path, {"student": student.state_dict(), "teacher": teacher.state_dict(),
                                  "head": head.state_dict(), **opt.state_dict(), "step": step, "history": history})

    bar = tqdm(range(start, cfg.steps), desc="stage 2 (self-taught)", disable=not progress)
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        losses = []
        for si in rng.choice(active, size=min(cfg.slides_per_step, len(active)), replace=False):
            slide = slides[si]
            n = len(slide.coords)
            rows = rng.choice(n, size=min(cfg.patches_per_slide, n), replace=False)
            others = np.setdiff1d(np.arange(n), rows)
            ctx = np.sort(rng.choice(others, size=min(cfg.context_patches, len(others)), replace=False))
            try:
                tiles = reader(slide, rows).to(device)
            except (OSError, ValueError, RuntimeError) as e:  # unreadable region: drop the slide, go on
                problems.append(f"{slide.case_id}: tile read failed at step {step} ({e}); slide dropped")
                active.remove(si)
                if not active:
                    raise RuntimeError(f"every slide failed to read; problems: {problems}") from e
                continue
            with torch.no_grad(), autocast(device, precision):
                teach = patch_features(teacher, tiles, cfg.multiscale).float()
                if len(ctx):
                    context = torch.from_numpy(read_feature_rows(slide.features, ctx)).to(device)
                    teach = torch.cat([teach, context])
                target = aggregator_tokens(aggregator, teach)[:len(rows)]
            with autocast(device, precision):
                pred = head(patch_features(student, tiles, cfg.multiscale))
            losses.append(_loss(pred, target, cfg.loss))
        if not losses:
            continue
        loss = torch.stack(losses).mean()
        opt.step(loss)
        ema_update(teacher, student, cfg.ema_momentum)
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": float(np.mean(window)), "seconds": time.time() - t0})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            window = []
        if (step + 1) % cfg.save_every == 0:
            save_state(step + 1)
    save_state(cfg.steps)
    student.eval()
    save_checkpoint(student, out / PATCH_ENCODER_WEIGHTS)
    write_json(out / "config.json", config_to_dict(cfg))
    metrics = {"history": history, "problems": problems, "n_slides": len(active)}
    write_json(out / "metrics.json", metrics)
    if history:
        _plot(history, out / "training.png")
    return metrics
