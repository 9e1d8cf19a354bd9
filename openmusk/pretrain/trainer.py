"""The pretraining loop shared by the tokenizer, stage 1 and stage 2.

One process or many under ``torchrun`` (DDP or FSDP through ``torch.distributed``); AdamW with
the paper's defaults from :mod:`openmusk.core.optim`; bf16 autocast (device and precision resolved
by :mod:`openmusk.core.runtime`, so ``auto`` means this rank's GPU and bf16 there); gradient accumulation;
activation checkpointing; atomic checkpoints holding model, optimiser, scheduler, data position
and RNG state, from which a killed run resumes exactly; logs to CSV and TensorBoard.
"""
from __future__ import annotations

import contextlib
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from openmusk.core.config import check_minimums
from openmusk.core.dist import init_distributed, is_main, rank, world_size
from openmusk.core.io import atomic_path, torch_load
from openmusk.core.optim import build_adamw, param_groups, warmup_cosine
from openmusk.core.runtime import autocast, normalize_precision, resolve_device, resolve_precision
from openmusk.pretrain.stream import JointLoader

__all__ = ["TrainConfig", "Trainer", "training_precision"]

Hook = Callable[[int, dict, "Trainer"], None]


@dataclass
class TrainConfig:
    """Optimisation and run settings; the defaults are the paper's stage-1 recipe."""

    total_steps: int = 1000
    warmup_steps: int = 100
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.0
    warmup_lr_ratio: float = 0.0     # lr of the first warm-up step / lr (the authors: 1e-6 / 1e-4)
    layer_decay: float = 1.0         # layer-wise lr decay (the authors' stage 2: 0.85)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_accum: int = 1
    clip_grad: float | None = 3.0
    precision: str = "auto"          # auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16
    grad_checkpointing: bool = False
    strategy: str = "ddp"            # ddp | fsdp (used when launched with torchrun on >1 process)
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    device: str = "auto"             # auto (this rank's GPU, else cpu) | cpu | cuda | cuda:N
    resume: bool = True

    def __post_init__(self) -> None:
        check_minimums(self, total_steps=1, warmup_steps=0, grad_accum=1, log_every=1, save_every=1)
        self.precision = normalize_precision(self.precision)
        if self.precision == "fp16":
            raise ValueError("precision fp16 is not supported (training in fp16 needs loss scaling); "
                             "use auto, bf16 or fp32")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.grad_accum < 1 or self.total_steps < 1:
            raise ValueError("grad_accum and total_steps must be at least 1")


def training_precision(precision: str, device: torch.device) -> str:
    """The autocast precision of a training run: ``auto`` is bf16 where the device supports it
    and fp32 elsewhere (never fp16, which would need loss scaling)."""
    p = resolve_precision(precision, device)
    return "fp32" if p == "fp16" else p


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars over ranks (they are per-rank means of equal-sized batches)."""
    if world_size() == 1 or not dist.is_initialized():
        return values
    keys = list(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


class Trainer:
    """Runs ``objective(**batch) -> {"loss", ...}`` for ``cfg.total_steps`` optimiser steps.

    ``model`` is the MUSK (or tokenizer) inside the objective, for activation checkpointing and
    export; ``output_dir`` receives ``checkpoint.pt``, ``log.csv`` and ``tb/``.
    """

    def __init__(self, objective: nn.Module, loader: JointLoader, cfg: TrainConfig,
                 output_dir: str | os.PathLike, model: nn.Module | None = None,
                 hooks: Sequence[Hook] = (), stage_config: dict | None = None):
        init_distributed()
        self.cfg, self.loader, self.hooks = cfg, loader, list(hooks)
        self.output_dir = Path(output_dir)
        self.device = resolve_device(cfg.device)
        self.precision = training_precision(cfg.precision, self.device)
        self.objective = objective.to(self.device).train()
        self.model = model
        self.stage_config = stage_config or {}
        if cfg.grad_checkpointing and model is not None and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        self._replicated: list[nn.Parameter] = []
        self.module = self._wrap(self.objective)
        self.optimizer = build_adamw(param_groups(self.objective, cfg.weight_decay, cfg.layer_decay,
                                                  depth=getattr(getattr(model, "config", None), "depth", 0)),
                                     cfg.lr, tuple(cfg.betas), cfg.eps)
        self.scheduler = warmup_cosine(self.optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio,
                                       cfg.warmup_lr_ratio)
        self.step = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------ set-up
    def _wrap(self, objective: nn.Module) -> nn.Module:
        """DDP or FSDP (fully_shard per encoder layer, then the whole objective) when distributed."""
        if world_size() == 1 or not dist.is_initialized():
            return objective
        if self.cfg.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard
            # FSDP2 cannot shard 0-d parameters (logit_scale): they stay replicated and their
            # gradients are averaged by hand after backward
            self._replicated = [p for p in objective.parameters() if p.ndim == 0]
            ignored = set(self._replicated)
            layers = getattr(getattr(getattr(self.model, "beit3", None), "encoder", None), "layers", [])
            for layer in layers:
                fully_shard(layer)
            fully_shard(objective, ignored_params=ignored)
            return objective
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(objective, device_ids=ids, broadcast_buffers=False)

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoint.pt"

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Full (unsharded) training state; a collective call when distributed."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        msd, osd = get_state_dict(self.objective, self.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state() if self.device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
        rngs = [(rng, cuda_rng, self.loader.state_dict())]
        if world_size() > 1 and dist.is_initialized():
            rngs = [None] * world_size()
            dist.all_gather_object(rngs, (rng, cuda_rng, self.loader.state_dict()))
        return {"model": msd, "optimizer": osd, "scheduler": self.scheduler.state_dict(),
                "step": self.step, "data": rngs[0][2], "data_ranks": [r[2] for r in rngs],
                "rng": [r[0] for r in rngs], "cuda_rng": [r[1] for r in rngs],
                "world_size": world_size(), "config": self.stage_config}

    def save(self) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0) after gathering the full state."""
        state = self.state_dict()
        if is_main():
            with atomic_path(self.checkpoint_path, suffix=".pt.tmp") as tmp:
                torch.save(state, tmp)
        if dist.is_initialized():
            dist.barrier()

    def load(self, path: str | os.PathLike) -> None:
        """Restore every part of a checkpoint written by :meth:`save`."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        state = torch_load(path, "pretraining checkpoint")
        ranks = state.get("data_ranks")  # per-rank positions (they differ in per-shard mode)
        if state["world_size"] != world_size() and ranks and any(r != ranks[0] for r in ranks):
            raise ValueError(f"{path}: a per-shard (split: shards) run of {state['world_size']} processes "
                             f"resumes only on {state['world_size']} processes, not {world_size()}: each "
                             "rank's position is in its own shards")
        if state["world_size"] != world_size():
            print(f"resuming a {state['world_size']}-process run on {world_size()} processes: "
                  "model, optimiser and data position restored, RNG streams restarted")
        set_state_dict(self.objective, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        same_world = state["world_size"] == world_size()
        self.loader.load_state_dict(ranks[rank()] if ranks and same_world else state["data"])
        self.step = int(state["step"])
        if state["world_size"] == world_size():
            torch.set_rng_state(state["rng"][rank()])
            if self.device.type == "cuda" and state["cuda_rng"][rank()].numel():
                torch.cuda.set_rng_state(state["cuda_rng"][rank()], self.device)

    # ------------------------------------------------------------------ logging
    def _log_rows_until(self, step: int) -> None:
        """Keep log.csv rows up to ``step`` (a resumed run rewrites what follows)."""
        path = self.output_dir / "log.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if float(r["step"]) <= step]
        self.history = [{k: float(v) for k, v in r.items()} for r in rows]
        self._write_csv()

    def _write_csv(self) -> None:
        if not self.history:
            return
        keys = list(self.history[0])
        with atomic_path(self.output_dir / "log.csv", suffix=".csv.tmp") as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.history)

    # ------------------------------------------------------------------ the loop
    def _to_device(self, batch: dict[str, dict]) -> dict[str, torch.Tensor]:
        merged: dict[str, torch.Tensor] = {}
        for part in batch.values():
            for k, v in part.items():
                if isinstance(v, torch.Tensor):
                    merged[k] = v.to(self.device, non_blocking=True)
        return merged

    def fit(self) -> list[dict]:
        """Train to ``total_steps`` (resuming from ``checkpoint.pt`` when present); returns the log rows."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed + rank())
        if is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)
            if is_main():
                self._log_rows_until(self.step)
        tb = None
        if is_main():
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(self.output_dir / "tb"), purge_step=self.step + 1)
        bar = tqdm(total=cfg.total_steps, initial=self.step, desc="pretrain", disable=not is_main())
        t0, last_step = time.perf_counter(), self.step
        try:
            while self.step < cfg.total_steps:
                row = self._train_step()
                self.step += 1
                row.update(step=float(self.step), lr=self.optimizer.param_groups[0]["lr"])
                for hook in self.hooks:
                    hook(self.step, row, self)
                if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                    dt = time.perf_counter() - t0
                    row["samples_per_s"] = self._samples_per_step() * (self.step - last_step) / max(dt, 1e-9)
                    t0, last_step = time.perf_counter(), self.step
                    if is_main():
                        self.history.append(row)
                        self._write_csv()
                        for k, v in row.items():
                            if k != "step":
                                tb.add_scalar(f"train/{k}", v, self.step)
                        bar.set_postfix(loss=f"{row['loss']:.4f}")
                if self.step % cfg.save_every == 0 or self.step == cfg.total_steps:
                    self.save()
                bar.update(1)
        finally:
            bar.close()
            if tb is not None:
                tb.close()
            self.loader.close()
        return self.history

    def _samples_per_step(self) -> int:
        first = next(iter(self.loader.streams.values()))
        return first.global_batch * self.cfg.grad_accum

    def _train_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns rank-averaged scalars."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = self._to_device(self.loader.next())
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.module, "no_sync") else self.module.no_sync()
            with sync:
                with autocast(self.device, self.precision):
                    out = self.module(**batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step + 1}")
                (loss / cfg.grad_accum).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().float()) / cfg.grad_accum
        for p in self._replicated:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world_size())
        if cfg.clip_grad:
            norm = torch.nn.utils.clip_grad_norm_(self.objective.parameters(), cfg.clip_grad)
            sums["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.optimizer.step()
        self.scheduler.step()
        if hasattr(self.objective, "after_step"):
            self.objective.after_step()
        row = _mean_over_ranks(sums, self.device)
        if "grad_norm" in sums:
            row["grad_norm"] = sums["grad_norm"]  # already global after DDP/FSDP reduction
        return row
