"""mSTAR stage 2: self-taught training of the patch encoder (MUSK's vision side).

Per step and slide, ``patches_per_slide`` tiles are read from the slide at the positions stored in
its feature file. An EMA teacher (a slowly moving copy of the encoder) extracts their features,
which join ``context_patches`` cached features of the same slide; the frozen stage-1 aggregator
re-embeds that bag, and its output tokens for the sampled tiles are the targets. The student
encoder, through a linear head, learns to reproduce them (cosine or smooth-L1 loss); the teacher
follows the student by EMA. Memory is bounded by the tiles per step, not by slide size. The
trained encoder is written with ``openmusk.model.save_checkpoint`` (loadable by ``load_checkpoint``).
Under ``torchrun`` each rank takes its share of every step's slides (DistributedDataParallel).
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
from openmusk.data.features_h5 import (FeaturesFileError, features_shape, patch_size_level0, read_coords_file,
                                       read_feature_rows)
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
        try:  # ours, TRIDENT's or CLAM's attributes (CLAM's patch_size is at its patch_level)
            size0 = patch_size_level0(attrs, coords=coords, where=feats)
        except ValueError as e:
            problems.append(f"{where}: {e}")
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


class _Step(nn.Module):
    """One step's student forward (head over the encoder) on this rank's slides, as a module so that
    DistributedDataParallel can wrap it; the loss is this rank's share of the global mean."""

    def __init__(self, student: nn.Module, head: nn.Module, multiscale: bool, loss: str):
        super().__init__()
        self.student, self.head = student, head
        self.multiscale, self.loss = multiscale, loss

    def forward(self, tiles: list[torch.Tensor], targets: list[torch.Tensor], n_global: int,
                world: int) -> torch.Tensor:
        """Sum of this rank's per-slide losses over the slides of the global batch, times the world size
        (DDP averages gradients over ranks, so the gradient is that of the global mean)."""
        if not tiles:  # a rank with no slide this step still joins the gradient all-reduce
            return sum(p.sum() for p in self.parameters()) * 0.0
        losses = [_loss(self.head(patch_features(self.student, t, self.multiscale)), y, self.loss)
                  for t, y in zip(tiles, targets)]
        return torch.stack(losses).sum() * (world / n_global)


def _sync_failures(failed: dict[int, str], n_slides: int, device: torch.device) -> dict[int, str]:
    """The slides whose tiles failed to read on any rank this step, with the reason, on every rank."""
    from openmusk.core.dist import all_reduce_sum, world_size

    if world_size() == 1:
        return failed
    mask = torch.zeros(n_slides, dtype=torch.int64, device=device)
    mask[list(failed)] = 1
    if not int(all_reduce_sum(mask).sum()):
        return failed
    import torch.distributed as dist

    gathered: list[dict[int, str]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, failed)
    return {k: v for part in gathered for k, v in part.items()}


def self_taught(cfg: SelfTaughtConfig, progress: bool = True) -> dict:
    """Run stage 2 as configured; returns metrics (also in ``output_dir/metrics.json``).

    Under ``torchrun`` every rank draws the same ``slides_per_step`` slides and handles every
    world-th of them (DistributedDataParallel); a slide whose tiles fail to read on any rank is
    dropped on all ranks; only rank 0 writes files.
    """
    from tqdm.auto import tqdm

    from openmusk.core.config import config_to_dict
    from openmusk.core.dist import all_reduce_sum, barrier, init_distributed, is_main, rank, world_size
    from openmusk.core.optim import param_groups
    from openmusk.core.runtime import autocast, resolve_device, resolve_precision
    from openmusk.encoders import load_encoder
    from openmusk.mil.trainer import Optimization, load_resume, save_resume
    from openmusk.model import save_checkpoint

    distributed = init_distributed()
    world, me = world_size(), rank()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)  # once, not per step
    out = Path(cfg.output_dir)
    if is_main():
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
    barrier()  # the output folder exists before any rank looks for a resume file
    state = load_resume(resume_path, device) if cfg.resume else None
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state)
        start, history = int(state["step"]), list(state["history"])
        problems, dropped = list(state.get("problems", problems)), set(state.get("dropped", []))
    else:
        dropped = set()
    step_module: nn.Module = _Step(student, head, cfg.multiscale, cfg.loss)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(step_module, find_unused_parameters=True,
                                              device_ids=[device.index] if device.type == "cuda" else None)
    reader = _TileReader(cfg.img_size)
    window: list[float] = []
    active = [i for i in range(len(slides)) if i not in dropped]
    t0 = time.time()

    def save_state(step: int) -> None:
        if is_main():
            save_resume(resume_path, {"student": student.state_dict(), "teacher": teacher.state_dict(),
                                      "head": head.state_dict(), **opt.state_dict(), "step": step,
                                      "history": history, "problems": problems,
                                      "dropped": sorted(set(range(len(slides))) - set(active))})
        barrier()

    bar = tqdm(range(start, cfg.steps), desc="stage 2 (self-taught)", disable=not (progress and is_main()))
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        chosen = rng.choice(active, size=min(cfg.slides_per_step, len(active)), replace=False)
        tiles, targets, failed = [], [], {}
        for si in chosen[me::world]:  # this rank's share of the global batch
            slide = slides[si]
            srng = np.random.default_rng([cfg.seed, step, int(si)])  # the same draw on whichever rank reads it
            n = len(slide.coords)
            rows = srng.choice(n, size=min(cfg.patches_per_slide, n), replace=False)
            others = np.setdiff1d(np.arange(n), rows)
            ctx = np.sort(srng.choice(others, size=min(cfg.context_patches, len(others)), replace=False))
            try:
                t = reader(slide, rows).to(device)
            except (OSError, ValueError, RuntimeError) as e:  # unreadable region: drop the slide, go on
                failed[int(si)] = f"{slide.case_id}: tile read failed at step {step} ({e}); slide dropped"
                continue
            with torch.no_grad(), autocast(device, precision):
                teach = patch_features(teacher, t, cfg.multiscale).float()
                if len(ctx):
                    context = torch.from_numpy(read_feature_rows(slide.features, ctx)).to(device)
                    teach = torch.cat([teach, context])
                targets.append(aggregator_tokens(aggregator, teach)[:len(rows)])
            tiles.append(t)
        for si, why in sorted(_sync_failures(failed, len(slides), device).items()):
            problems.append(why)
            active.remove(si)
        if not active:
            raise RuntimeError(f"every slide failed to read; problems: {problems}")
        n_global = int(all_reduce_sum(torch.tensor(len(tiles), device=device)))
        if not n_global:
            continue
        with autocast(device, precision):
            loss = step_module(tiles, targets, n_global, world)
        opt.step(loss)
        ema_update(teacher, student, cfg.ema_momentum)
        window.append(float(all_reduce_sum(loss.detach().float())) / world)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": float(np.mean(window)), "seconds": time.time() - t0})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            window = []
        if (step + 1) % cfg.save_every == 0:
            save_state(step + 1)
    save_state(cfg.steps)
    student.eval()
    metrics = {"history": history, "problems": problems, "n_slides": len(active), "world_size": world}
    if not is_main():
        return metrics
    save_checkpoint(student, out / PATCH_ENCODER_WEIGHTS)
    write_json(out / "config.json", config_to_dict(cfg))
    write_json(out / "metrics.json", metrics)
    if history:
        _plot(history, out / "training.png")
    return metrics
