"""Entry points of the pretraining commands: tokenizer, stage 1, stage 2, filtering, shards.

Each takes its config dataclass (:mod:`openmusk.pretrain.config`) and optional trainer hooks, runs
under one process or ``torchrun``, and writes into ``output_dir``: ``checkpoint.pt`` (resumable
state), ``log.csv``, ``tb/`` and the exported weights (``tokenizer.safetensors`` or
``model.safetensors`` in the released MUSK layout).
"""
from __future__ import annotations

import csv
import dataclasses
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from openmusk.core.dist import init_distributed, is_main, rank, world_size
from openmusk.core.images import open_image
from openmusk.core.io import atomic_path, write_json
from openmusk.core.runtime import autocast, resolve_device, resolve_precision
from openmusk.pretrain.config import (ContrastiveStageConfig, DataConfig, FilterConfig,
                                      MaskedStageConfig, ShardsConfig, TokenizerStageConfig)
from openmusk.pretrain.contrastive import ContrastiveAlignment
from openmusk.pretrain.data import (ImageDecoder, PairDecoder, TextDecoder, make_shards,
                                    make_slide_shards)
from openmusk.pretrain.masked import MaskedModelling
from openmusk.pretrain.stream import JointLoader, ShardStream
from openmusk.pretrain.trainer import Hook, Trainer, training_precision
from openmusk.pretrain.vqkd import VQKD, VQKDObjective, load_tokenizer, resolve_teacher, save_tokenizer

__all__ = ["build_musk", "train_tokenizer", "train_masked", "train_contrastive", "filter_pairs", "score_pairs",
           "make_shards_from_config", "export_model"]


def build_musk(name: str | None, pretrained: str | None, overrides: dict, drop_path_rate: float):
    """A MUSK in train mode: named config (or the checkpoint's), fields overridden, weights loaded."""
    from openmusk.model import config_from_checkpoint, create_model, get_config, resolve_weights
    if name:
        config = get_config(name)
    elif pretrained:
        config = config_from_checkpoint(resolve_weights(pretrained))
    else:
        raise ValueError("give a model config name or pretrained weights")
    config = dataclasses.replace(config, **{**overrides, "drop_path_rate": drop_path_rate})
    return create_model(config, pretrained=pretrained).train()


def _stream(spec: str | None, decoder, data: DataConfig, seed: int, name: str) -> ShardStream:
    if not spec:
        raise ValueError(f"data.{name} is not set: give the {name} shards (folder, glob or brace range)")
    return ShardStream(spec, decoder, data.global_batch, seed, data.shuffle_buffer,
                       rank(), world_size(), name=name, split=data.split)


def _augment(data: DataConfig, img_size: int):
    """The data's augmentation config at the model's image size."""
    return dataclasses.replace(data.augment, img_size=img_size)


def _full_state(trainer: Trainer, prefix: str) -> dict[str, torch.Tensor] | None:
    """The unsharded state of the objective's submodule ``prefix`` on rank 0 (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(trainer.objective,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    return {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")}


def export_model(trainer: Trainer, path: str | Path) -> Path:
    """Save the trained MUSK (heads of the objective dropped) in the released safetensors layout."""
    from openmusk.model import Musk, save_checkpoint
    sd = _full_state(trainer, "model")
    if is_main():
        fresh = Musk(dataclasses.replace(trainer.model.config, drop_path_rate=0.0))
        fresh.load_state_dict(sd)
        save_checkpoint(fresh, path)
    return Path(path)


def train_tokenizer(cfg: TokenizerStageConfig, hooks: Sequence[Hook] = (), teacher=None) -> dict:
    """Train the VQ-KD tokenizer; ``teacher`` (an encoder or a callable) overrides ``cfg.teacher``."""
    init_distributed()
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    tcfg = cfg.tokenizer
    teach = resolve_teacher(teacher if teacher is not None else cfg.teacher, tcfg.grid,
                            cfg.teacher_pretrained, device, training_precision(cfg.train.precision, device),
                            **cfg.teacher_args)
    with torch.no_grad():
        dim = teach(torch.zeros(1, 3, tcfg.img_size, tcfg.img_size, device=device)).shape[-1]
    tcfg = dataclasses.replace(tcfg, teacher_dim=int(dim))
    tokenizer = VQKD(tcfg)
    decoder = ImageDecoder(_augment(cfg.data, tcfg.img_size), tcfg.patch_size)
    loader = JointLoader({"images": _stream(cfg.data.images, decoder, cfg.data, cfg.train.seed, "images")},
                         cfg.data.num_workers)
    trainer = Trainer(VQKDObjective(tokenizer, teach), loader, cfg.train, cfg.output_dir,
                      model=tokenizer, hooks=hooks, stage_config=asdict(cfg))
    history = trainer.fit()
    path = Path(cfg.output_dir) / "tokenizer.safetensors"
    sd = _full_state(trainer, "tokenizer")
    if is_main():
        out = VQKD(tcfg)
        out.load_state_dict(sd)
        save_tokenizer(out, path)
    return {"history": history, "tokenizer": str(path), "trainer": trainer}


def train_masked(cfg: MaskedStageConfig, hooks: Sequence[Hook] = ()) -> dict:
    """Stage 1: unified masked modelling (MIM with the VQ-KD targets + MLM)."""
    init_distributed()
    torch.manual_seed(cfg.train.seed)
    model = build_musk(cfg.model, cfg.pretrained, cfg.model_config, cfg.drop_path_rate)
    tokenizer = load_tokenizer(cfg.tokenizer)
    mc = model.config
    images = ImageDecoder(_augment(cfg.data, mc.img_size), mc.patch_size, cfg.mask_ratio, cfg.min_mask_block,
                          cfg.max_mask_block)
    texts = TextDecoder(cfg.data.max_text_len, cfg.text_mask_ratio, whole_word=cfg.whole_word_mask,
                        targets=cfg.mlm_targets)
    loader = JointLoader({"images": _stream(cfg.data.images, images, cfg.data, cfg.train.seed, "images"),
                          "texts": _stream(cfg.data.texts, texts, cfg.data, cfg.train.seed + 1, "texts")},
                         cfg.data.num_workers)
    trainer = Trainer(MaskedModelling(model, tokenizer), loader, cfg.train, cfg.output_dir,
                      model=model, hooks=hooks, stage_config=asdict(cfg))
    history = trainer.fit()
    path = export_model(trainer, Path(cfg.output_dir) / "model.safetensors")
    return {"history": history, "model": str(path), "trainer": trainer}


def train_contrastive(cfg: ContrastiveStageConfig, hooks: Sequence[Hook] = ()) -> dict:
    """Stage 2: contrastive alignment with the auxiliary cross-attention MLM decoder."""
    init_distributed()
    torch.manual_seed(cfg.train.seed)
    model = build_musk(cfg.model, cfg.pretrained, cfg.model_config, cfg.drop_path_rate)
    mc = model.config
    decoder = PairDecoder(ImageDecoder(_augment(cfg.data, mc.img_size), mc.patch_size),
                          TextDecoder(cfg.data.max_text_len, cfg.text_mask_ratio, targets=cfg.mlm_targets,
                                      trim=cfg.trim_caption))
    loader = JointLoader({"pairs": _stream(cfg.data.pairs, decoder, cfg.data, cfg.train.seed, "pairs")},
                         cfg.data.num_workers)
    objective = ContrastiveAlignment(model, cfg.decoder_depth, cfg.mlm_weight, cfg.decoder_heads, cfg.clip_text,
                                     cfg.max_logit_scale)
    trainer = Trainer(objective, loader, cfg.train, cfg.output_dir, model=model, hooks=hooks,
                      stage_config=asdict(cfg))
    history = trainer.fit()
    path = export_model(trainer, Path(cfg.output_dir) / "model.safetensors")
    return {"history": history, "model": str(path), "trainer": trainer}


@torch.no_grad()
def score_pairs(model, pairs: str, batch_size: int = 64, max_text_len: int = 100,
                device: str | torch.device | None = None, precision: str = "fp32") -> list[tuple[str, str, float]]:
    """Cosine similarity of every pair in ``pairs`` shards: (shard, key, score); bad pairs get NaN.

    ``device`` defaults to the model's; ``precision`` is the autocast of the forward passes."""
    from openmusk.data.shards import iter_tar_samples, list_shards
    from openmusk.data.transforms import get_transform
    from openmusk.pretrain.data import _image_bytes, _text
    from openmusk.text import get_tokenizer
    tok, transform = get_tokenizer(), get_transform(model.config.img_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out: list[tuple[str, str, float]] = []
    batch: list[tuple[str, str, torch.Tensor, str]] = []

    def flush() -> None:
        if not batch:
            return
        imgs = torch.stack([b[2] for b in batch]).to(device)
        ids, pad = tok([b[3] for b in batch], max_len=max_text_len)
        with autocast(device, precision):
            img = model.encode_image(imgs)
            txt = model.encode_text(ids.to(device), pad.to(device))
        for (shard, key, _, _), s in zip(batch, (img.float() * txt.float()).sum(-1).tolist()):
            out.append((shard, key, float(s)))
        batch.clear()

    shards = list_shards(pairs)
    for shard in tqdm(shards, desc="score pairs", unit="shard"):
        for sample in iter_tar_samples(shard):
            try:
                x = transform(open_image(_image_bytes(sample), f"{shard}:{sample['__key__']}"))
                text = _text(sample)
            except (OSError, ValueError) as e:
                print(f"filter: unreadable pair {sample['__key__']!r} in {shard}: {e}", file=sys.stderr)
                out.append((str(shard), sample["__key__"], float("nan")))
                continue
            batch.append((str(shard), sample["__key__"], x, text))
            if len(batch) == batch_size:
                flush()
    flush()
    return out


def filter_pairs(cfg: FilterConfig) -> dict:
    """Bootstrapped filtering: score all pairs, drop the lowest ``drop_fraction``, write the rest."""
    from openmusk.data.shards import ShardWriter, iter_tar_samples
    from openmusk.model import create_model
    device = resolve_device(cfg.device)
    model = create_model(cfg.model, pretrained=cfg.pretrained, device=device).eval()
    scores = score_pairs(model, cfg.pairs, cfg.batch_size, cfg.max_text_len, device,
                         resolve_precision(cfg.precision, device))
    valid = np.array([s for _, _, s in scores if np.isfinite(s)])
    if len(valid) == 0:
        raise ValueError(f"{cfg.pairs}: no readable image-text pairs")
    threshold = float(np.quantile(valid, cfg.drop_fraction)) if cfg.drop_fraction > 0 else -np.inf
    order = np.argsort(valid, kind="stable")
    n_drop = int(round(cfg.drop_fraction * len(valid)))
    dropped_scores = set(order[:n_drop].tolist())
    keep, i = set(), 0
    for shard, key, s in scores:
        if np.isfinite(s):
            if i not in dropped_scores:
                keep.add((shard, key))
            i += 1
    shards = sorted({shard for shard, _, _ in scores})
    written = 0
    with ShardWriter(cfg.output, cfg.maxcount) as writer:
        for shard in shards:
            for sample in iter_tar_samples(shard):
                if (shard, sample["__key__"]) in keep:
                    writer.write({k: v for k, v in sample.items() if k != "__shard__"})
                    written += 1
        paths = writer.close()
    out_dir = Path(cfg.output).parent
    with atomic_path(out_dir / "scores.csv", suffix=".csv.tmp") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["shard", "key", "score", "kept"])
            for shard, key, s in scores:
                w.writerow([shard, key, f"{s:.6f}", int((shard, key) in keep)])
    summary = {"scored": len(scores), "unreadable": int(len(scores) - len(valid)),
               "kept": written, "dropped": n_drop, "threshold": threshold,
               "shards": [str(p) for p in paths]}
    write_json(out_dir / "filter_summary.json", summary)
    return summary


def make_shards_from_config(cfg: ShardsConfig) -> dict:
    """Run :func:`~openmusk.pretrain.data.make_shards` (or ``make_slide_shards`` for slides)."""
    if cfg.kind == "slides":
        return make_slide_shards(cfg.source, cfg.output, cfg.fields_per_slide, cfg.fov_size,
                                 tuple(cfg.fov_mpps), cfg.min_tissue, cfg.maxcount, cfg.seed)
    return make_shards(cfg.source, cfg.output, cfg.kind, cfg.maxcount, cfg.image_column,
                       cfg.text_column, cfg.max_side, cfg.text_window)
