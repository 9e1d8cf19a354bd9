"""Fine-tune MUSK for VQA: the run config (read by openmusk.core.config), training loop, resumable epochs.

Loss: softmax cross-entropy over the answer vocabulary. BEiT-3 trains VQAv2 with binary
cross-entropy on soft scores because VQAv2 has ten human answers per question whose agreement gives
graded targets; PathVQA (and the generic tables read here) carry one reference answer per
question, so soft scores collapse to one-hot targets, and cross-entropy is then the proper
likelihood: it makes the answers compete, gives calibrated probabilities for ``vqa ask`` and needs
no per-class threshold. Training questions whose answer is outside the vocabulary are left out of
training (and counted); at evaluation they stay in and count as wrong.

Defaults follow BEiT-3's VQAv2 fine-tuning of its large model (the MUSK authors released no VQA
code): lr 2e-5 with 20x on the task head, weight decay 0.01, one warm-up epoch then cosine,
10 epochs, drop-path 0.15, batch 128 (here 16 x 8 accumulation steps); AdamW betas (0.9, 0.95) as
in MUSK pretraining.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from openmusk.core.config import config_to_dict, path_field
from openmusk.core.io import read_json, write_json
from openmusk.core.optim import build_adamw, param_groups, warmup_cosine
from openmusk.core.runtime import (DEFAULT_DEVICE, DEFAULT_PRECISION, autocast, normalize_precision,
                                   resolve_device, resolve_precision, seed_everything)
from openmusk.eval.config import is_weights_file
from openmusk.eval.vqa.answers import AnswerVocab
from openmusk.eval.vqa.data import VQACollate, VQAData, VQADataset, canonical_split, open_vqa
from openmusk.eval.vqa.model import FREEZE_MODES, MuskVQA, freeze_mode, set_trainable
from openmusk.eval.vqa.plots import plot_history
from openmusk.eval.vqa.predictor import ANSWERS_FILE, VQAPredictor, save_vqa

__all__ = ["VQATrainConfig", "train_vqa", "build_vqa_model", "build_vqa_optimizer"]

RESUME_DIR = "resume"


def _bf16_to_precision(value: object) -> str:
    """The old ``bf16: true|false`` key as a precision."""
    return "bf16" if str(value).strip().lower() in ("true", "yes", "on", "1") else "fp32"


@dataclass
class VQATrainConfig:
    """Everything ``openmusk vqa train`` needs; the YAML file's keys are these fields.

    Read with ``load_config(VQATrainConfig, "pathvqa.yaml")``: relative ``data``, ``output_dir``,
    ``image_root`` and local ``weights`` files resolve against the YAML's folder.
    """

    renamed_keys: ClassVar[dict] = {"out_dir": "output_dir", "bf16": ("precision", _bf16_to_precision)}

    data: str = path_field()               # PathVQA parquet (file/folder) or JSONL/CSV table
    output_dir: str = path_field("runs/vqa")  # checkpoint folder (model, heads, answers, history)
    image_root: Optional[str] = path_field(None)  # base folder of relative image paths in a table
    train_split: str = "train"
    val_split: Optional[str] = "validation"  # evaluated after every epoch when present
    model: str = "musk_large_patch16_384"  # a named MUSK config
    weights: Optional[str] = path_field("hf_hub:xiangjx/musk", when=is_weights_file)  # null/random: random init
    img_size: Optional[int] = None         # null: the config's (384); else positions interpolated
    drop_path_rate: float = 0.15
    question_only: bool = False            # the control: same heads, question without image
    max_len: int = 64                      # question tokens (BEiT-3 VQA uses 64)
    min_answer_count: int = 1              # answers seen fewer times in training are dropped
    max_answers: Optional[int] = None      # keep at most this many most frequent answers
    epochs: int = 10
    batch_size: int = 16
    accum_steps: int = 8                   # gradient accumulation: effective batch 128
    lr: float = 2e-5
    head_lr_scale: float = 20.0            # BEiT-3's task_head_lr_weight
    layer_decay: float = 1.0               # layer-wise LR decay (1.0 = off, as BEiT-3 VQAv2)
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    freeze: str = "none"                   # what is frozen: none | last_k (all but the last last_k layers) | encoder
    last_k: int = 0                        # layers trained when freeze is last_k
    precision: str = DEFAULT_PRECISION     # auto (bf16 on a GPU, fp32 on cpu) | fp32 | bf16 | fp16
    grad_checkpointing: bool = False
    device: str = DEFAULT_DEVICE           # auto: this rank's GPU when there is one, else cpu
    num_workers: int = 2
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE_MODES and self.freeze not in ("full", "heads"):
            raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {self.freeze!r}")
        self.freeze = freeze_mode(self.freeze)
        for name in ("epochs", "batch_size", "accum_steps", "max_len", "min_answer_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.precision = normalize_precision(self.precision)


def build_vqa_model(config: VQATrainConfig, num_answers: int) -> MuskVQA:
    """MUSK backbone (pretrained unless ``weights`` is null or ``random``) with fresh VQA heads."""
    from openmusk.model import create_model, get_config

    random_init = config.weights is None or config.weights.startswith("random")
    named = config.weights.partition(":")[2] if random_init and config.weights else ""  # random:CONFIG
    musk_config = dataclasses.replace(get_config(named or config.model), drop_path_rate=config.drop_path_rate)
    if config.img_size:
        musk_config = dataclasses.replace(musk_config, img_size=config.img_size)
    backbone = create_model(musk_config, pretrained=None if random_init else config.weights)
    return MuskVQA(backbone, num_answers, question_only=config.question_only)


def build_vqa_optimizer(model: MuskVQA, config: VQATrainConfig) -> torch.optim.AdamW:
    """AdamW: backbone groups with layer-wise decay, head groups at ``head_lr_scale`` x lr."""
    groups = param_groups(model.backbone, weight_decay=config.weight_decay,
                          layer_decay=config.layer_decay, depth=model.backbone.config.depth)
    for g in param_groups(model.heads(), weight_decay=config.weight_decay):
        g["lr_scale"] = g["lr_scale"] * config.head_lr_scale
        groups.append(g)
    return build_adamw(groups, lr=config.lr)


def _save_resume(folder: Path, model: MuskVQA, opt, sched, epoch: int, history: list) -> None:
    """Model, optimiser and scheduler after ``epoch`` (atomic files), for ``train_vqa`` to resume."""
    from safetensors.torch import save_file

    from openmusk.core.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors", suffix=".safetensors.tmp") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_path(folder / "optimizer.pt") as tmp:
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp)
    write_json(folder / "state.json", {"epoch": epoch, "history": history})


def _load_resume(folder: Path, model: MuskVQA, opt, sched) -> tuple[int, list]:
    """Restore a run saved by ``_save_resume``; returns (epochs done, history)."""
    from openmusk.core.io import load_safetensors, torch_load

    state = read_json(folder / "state.json")
    model.load_state_dict(load_safetensors(folder / "model.safetensors", "VQA resume weights"))
    saved = torch_load(folder / "optimizer.pt", "VQA optimiser state")
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    return int(state["epoch"]), list(state["history"])


def _vocab(train: VQAData, config: VQATrainConfig, out: Path) -> AnswerVocab:
    """The answer vocabulary: the one saved in ``out`` when resuming, else built from training."""
    vocab = AnswerVocab.build(train.answers, config.min_answer_count, config.max_answers)
    saved = out / ANSWERS_FILE
    if saved.exists():
        old = AnswerVocab.from_dict(read_json(saved))
        if old.answers != vocab.answers:
            raise ValueError(f"{saved}: answer vocabulary differs from the one this config builds; "
                             f"use a new output_dir or delete the old run")
    write_json(saved, vocab.to_dict())
    return vocab


def _train_mode(model: MuskVQA, config: VQATrainConfig) -> None:
    """Training mode; a fully frozen backbone stays in eval mode (no drop-path on fixed features)."""
    model.train()
    if config.freeze == "encoder":
        model.backbone.eval()


def train_vqa(config: VQATrainConfig) -> dict:
    """Fine-tune, evaluate on the validation split each epoch, save the checkpoint folder.

    Resumes from ``output_dir/resume`` after the last finished epoch. Rows whose image cannot be
    read are skipped and listed under "skipped" in the run summary, which is returned and written
    to ``output_dir/history.json`` (curves in ``history.png``).
    """
    from tqdm.auto import tqdm

    from openmusk.data.transforms import get_transform
    from openmusk.text import get_tokenizer

    seed_everything(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    data = open_vqa(config.data, image_root=config.image_root)
    train = data.split(config.train_split)
    val = None
    if config.val_split:
        if canonical_split(config.val_split, "val_split") in data.splits:
            val = data.split(config.val_split)
        else:
            print(f"vqa train: no {config.val_split!r} split in {config.data}; no validation")
    vocab = _vocab(train, config, out)
    keep = [i for i, a in enumerate(train.answers) if a in vocab]
    dropped = len(train) - len(keep)
    train = train.select(keep)

    model = build_vqa_model(config, len(vocab)).to(device)
    trainable = set_trainable(model, config.freeze, config.last_k)
    model.backbone.set_grad_checkpointing(config.grad_checkpointing)
    opt = build_vqa_optimizer(model, config)
    tokenizer = get_tokenizer()
    transform = get_transform(img_size=model.backbone.config.img_size)
    ds = VQADataset(train, transform, vocab, load_images=not config.question_only)
    collate = VQACollate(tokenizer, config.max_len)
    batches = math.ceil(len(ds) / config.batch_size)
    steps_per_epoch = math.ceil(batches / config.accum_steps)
    sched = warmup_cosine(opt, round(config.warmup_epochs * steps_per_epoch),
                          config.epochs * steps_per_epoch, config.min_lr_ratio)
    start_epoch, history = 0, []
    if (out / RESUME_DIR / "state.json").exists():
        start_epoch, history = _load_resume(out / RESUME_DIR, model, opt, sched)
    write_json(out / "train_config.json", config_to_dict(config))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 needs loss scaling
    skipped: dict[str, str] = {}

    for epoch in range(start_epoch, config.epochs):
        _train_mode(model, config)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=config.batch_size, shuffle=True, collate_fn=collate,
            num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed + epoch))
        t0, losses, seen = time.perf_counter(), [], 0
        bar = tqdm(loader, desc=f"vqa epoch {epoch + 1}/{config.epochs}", disable=not config.progress)
        for i, batch in enumerate(bar):
            skipped.update({train.question_ids[j]: msg for j, msg in batch["errors"]})
            if len(batch["target"]):
                images = batch.get("images")
                with autocast(device, precision):
                    logits = model(images.to(device) if images is not None else None,
                                   batch["input_ids"].to(device), batch["padding_mask"].to(device))
                loss = F.cross_entropy(logits.float(), batch["target"].to(device))
                scaler.scale(loss / config.accum_steps).backward()
                losses.append(loss.item())
                seen += len(batch["target"])
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if (i + 1) % config.accum_steps == 0 or i + 1 == len(loader):
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
        record = {"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)),
                  "train_samples_per_s": seen / (time.perf_counter() - t0),
                  "lr": opt.param_groups[-1]["lr"]}
        if val is not None:
            predictor = VQAPredictor(model, vocab, config.max_len, precision=precision)
            rows, _ = predictor.predict(val, batch_size=config.batch_size,
                                        num_workers=config.num_workers, progress=False)
            record["val_accuracy"] = sum(r["correct"] for r in rows) / max(1, len(rows))
            _train_mode(model, config)
        history.append(record)
        _save_resume(out / RESUME_DIR, model, opt, sched, epoch + 1, history)

    save_vqa(model.eval(), vocab, out, config.max_len)
    summary = {"history": history, "answers": len(vocab), "train_questions": len(train),
               "train_dropped_out_of_vocab": dropped, "trainable_parameters": trainable,
               "skipped": skipped, "device": str(device), "precision": precision}
    write_json(out / "history.json", summary)
    if history:
        plot_history(history, out / "history.png")
    return summary
