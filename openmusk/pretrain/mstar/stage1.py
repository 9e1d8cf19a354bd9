"""mSTAR stage 1: pretrain a slide aggregator against reports and RNA-seq with tri-modal CLIP losses.

One epoch visits every training patient that has at least two modalities; each step reads a random
subset of at most ``max_patches`` patches per slide, so memory does not grow with slide size.
After every epoch the state is written atomically (``resume.pt``) and cross-modal retrieval on the
held-out patients is logged; at the end the model, the aggregator alone (for
``openmusk mil train --init-aggregator``), the RNA preprocessing, metrics and a plot are written.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from openmusk.core.io import atomic_path, write_json
from openmusk.pretrain.mstar.cohort import Cohort, PatientRecord, load_cohort, read_bag, read_rna_table
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig
from openmusk.pretrain.mstar.loss import TriModalClipLoss
from openmusk.pretrain.mstar.model import (AGGREGATOR_WEIGHTS, STAGE1_WEIGHTS, MstarArch, MstarModel,
                                           ReportEncoder, save_stage1)
from openmusk.pretrain.mstar.rna import RnaPreprocessor

__all__ = ["pretrain_aggregator", "embed_patients", "cross_modal_retrieval", "pad_bags", "MODALITIES"]

MODALITIES = ("slide", "report", "rna")


def pad_bags(bags: Sequence[np.ndarray], device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """List of (n_i, D) arrays -> padded (B, max n, D) tensor and (B, max n) bool mask (True = real)."""
    n = max(len(b) for b in bags)
    x = torch.zeros(len(bags), n, bags[0].shape[1])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, :len(b)] = torch.from_numpy(b)
        mask[i, :len(b)] = True
    return x.to(device), mask.to(device)


def _attach_rna(cohort: Cohort, rna_table: str, n_genes: int) -> RnaPreprocessor | None:
    """Fit the RNA preprocessing on training patients and store each patient's processed profile."""
    if not rna_table:
        return None
    cases, genes, counts = read_rna_table(rna_table)
    row = {c: i for i, c in enumerate(cases)}
    train = [row[p.case_id] for p in cohort.split("train") if p.case_id in row]
    if len(train) < 2:
        raise ValueError(f"{rna_table}: fewer than two training patients have RNA-seq")
    prep = RnaPreprocessor(n_genes=n_genes).fit(counts[train], genes)
    processed = prep.transform(counts, genes)
    for p in cohort.patients:
        if p.case_id in row:
            p.rna = processed[row[p.case_id]]
    return prep


def _present(patients: Sequence[PatientRecord]) -> dict[str, np.ndarray]:
    """Which modality each patient has."""
    return {"slide": np.array([bool(p.feature_paths) for p in patients]),
            "report": np.array([bool(p.report) for p in patients]),
            "rna": np.array([p.rna is not None for p in patients])}


def _forward(model: MstarModel, patients: Sequence[PatientRecord], reports: torch.Tensor | ReportEncoder,
             report_index: dict[str, int], max_patches: int, rng: np.random.Generator,
             device: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Embeddings of every modality for a batch (zeros where absent) and the presence masks."""
    present = {k: torch.from_numpy(v).to(device) for k, v in _present(patients).items()}
    b = len(patients)
    emb: dict[str, torch.Tensor] = {}
    dim = model.arch.embed_dim
    idx = present["slide"].nonzero().flatten().tolist()
    if idx:
        x, mask = pad_bags([read_bag(patients[i].feature_paths, max_patches, rng)[0] for i in idx], device)
        out = model.encode_slide(x, mask)
        emb["slide"] = torch.zeros(b, dim, device=device, dtype=out.dtype).index_copy(
            0, torch.tensor(idx, device=device), out)
    idx = present["report"].nonzero().flatten().tolist()
    if idx:
        if isinstance(reports, ReportEncoder):
            text = reports([patients[i].report for i in idx])
        else:
            text = reports[[report_index[patients[i].case_id] for i in idx]].to(device)
        out = model.encode_report(text)
        emb["report"] = torch.zeros(b, dim, device=device, dtype=out.dtype).index_copy(
            0, torch.tensor(idx, device=device), out)
    idx = present["rna"].nonzero().flatten().tolist()
    if idx and model.rna_encoder is not None:
        out = model.encode_rna(torch.from_numpy(np.stack([patients[i].rna for i in idx])).to(device))
        emb["rna"] = torch.zeros(b, dim, device=device, dtype=out.dtype).index_copy(
            0, torch.tensor(idx, device=device), out)
    return emb, {k: present[k] for k in emb}


@torch.no_grad()
def embed_patients(model: MstarModel, patients: Sequence[PatientRecord], reports: torch.Tensor | ReportEncoder,
                   report_index: dict[str, int], max_patches: int = 0, batch_size: int = 16,
                   device: str = "cpu", seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Shared-space embeddings of every modality of ``patients`` and presence masks (eval mode)."""
    model.eval()
    rng = np.random.default_rng(seed)
    embs: dict[str, list] = {}
    pres: dict[str, list] = {}
    for s in range(0, len(patients), batch_size):
        e, p = _forward(model, patients[s:s + batch_size], reports, report_index, max_patches, rng, device)
        n = len(patients[s:s + batch_size])
        for m in MODALITIES:
            embs.setdefault(m, []).append(e[m].float().cpu().numpy() if m in e else np.zeros((n, model.arch.embed_dim)))
            pres.setdefault(m, []).append(p[m].cpu().numpy() if m in p else np.zeros(n, bool))
    return ({m: np.concatenate(v) for m, v in embs.items()}, {m: np.concatenate(v) for m, v in pres.items()})


def cross_modal_retrieval(emb: dict[str, np.ndarray], present: dict[str, np.ndarray],
                          ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Recall@k of finding the same patient in the other modality, both directions, per modality pair.

    Only patients with both modalities take part; ``chance@k`` is k / n for comparison.
    """
    out = {}
    names = [m for m in MODALITIES if m in emb and present[m].any()]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rows = np.flatnonzero(present[a] & present[b])
            if len(rows) < 2:
                continue
            sim = emb[a][rows] @ emb[b][rows].T
            for name, s in ((f"{a}->{b}", sim), (f"{b}->{a}", sim.T)):
                rank = (s > np.diag(s)[:, None]).sum(1)
                res = {f"R@{k}": float((rank < k).mean()) for k in ks}
                res.update({f"chance@{k}": min(1.0, k / len(rows)) for k in ks})
                res["n"] = int(len(rows))
                out[name] = res
    return out


def _report_cache(cfg: AggregatorPretrainConfig, encoder: ReportEncoder, patients: Sequence[PatientRecord],
                  out_dir: Path, progress: bool = True) -> tuple[torch.Tensor, dict[str, int]]:
    """Frozen report embeddings for every patient with a report, cached on disk keyed by the texts."""
    import hashlib

    from safetensors.torch import load_file, save_file

    with_report = [p for p in patients if p.report]
    key = hashlib.sha256(("\x00".join(f"{p.case_id}\x01{p.report}" for p in with_report)
                          + f"|{cfg.musk_model}|{cfg.weights}|{cfg.report_max_len}").encode()).hexdigest()
    path = out_dir / "report_embeddings.safetensors"
    index = {p.case_id: i for i, p in enumerate(with_report)}
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return load_file(str(path))["embeddings"], index
    emb = encoder.embed_all([p.report for p in with_report], progress=progress)
    with atomic_path(path, suffix=".safetensors.tmp") as tmp:
        save_file({"embeddings": emb.contiguous()}, str(tmp), metadata={"key": key})
    return emb, index


def _plot(history: list[dict], path: Path) -> None:
    """Training loss and held-out slide-report recall@5 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax[0].set(xlabel="epoch", ylabel="tri-modal CLIP loss", title="training loss")
    for pair in sorted({k for h in history for k in h.get("retrieval", {})}):
        pts = [(h["epoch"], h["retrieval"][pair]["R@5"]) for h in history if pair in h.get("retrieval", {})]
        ax[1].plot(*zip(*pts), marker=".", label=pair)
    ax[1].set(xlabel="epoch", ylabel="recall@5 (held out)", title="cross-modal retrieval", ylim=(0, 1.02))
    if ax[1].lines:
        ax[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def pretrain_aggregator(cfg: AggregatorPretrainConfig, progress: bool = True) -> dict:
    """Run stage 1 as configured; returns the final metrics (also written to ``out_dir/metrics.json``)."""
    import openmusk
    from tqdm.auto import tqdm

    from openmusk.mil.models import save_aggregator
    from openmusk.core.optim import build_adamw, param_groups, warmup_cosine

    if cfg.text_mode not in ("frozen", "tuned"):
        raise ValueError(f"text_mode must be 'frozen' or 'tuned', got {cfg.text_mode!r}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    cohort = load_cohort(cfg.table, cfg.val_fraction, cfg.seed)
    prep = _attach_rna(cohort, cfg.rna_table, cfg.n_genes)
    kept = out / "report_encoder.safetensors"
    if not cfg.weights and cfg.resume and kept.is_file():  # resuming with the random encoder saved before
        musk = openmusk.create_model(pretrained=str(kept), device=cfg.device)
    else:
        musk = openmusk.create_model(cfg.musk_model, pretrained=cfg.weights or None, device=cfg.device)
        if not cfg.weights:  # a random report encoder must be kept: zero-shot needs the very same one
            openmusk.save_checkpoint(musk, kept)
    encoder = ReportEncoder(musk, openmusk.get_tokenizer(), cfg.report_max_len)
    arch = MstarArch(cfg.aggregator, cohort.feature_dim, cfg.hidden_dim, cfg.embed_dim, encoder.dim,
                     len(prep.genes) if prep else 0, list(cfg.rna_hidden))
    model = MstarModel(arch).to(cfg.device)
    if cfg.text_mode == "frozen":
        reports, report_index = _report_cache(cfg, encoder, cohort.patients, out, progress)
        del musk, encoder
        encoder = None
    else:
        reports, report_index = encoder, {}
    train = [p for p in cohort.split("train") if sum(int(v[0]) for v in _present([p]).values()) >= 2]
    held_out = [p for p in cohort.patients if p.split != "train"]
    if len(train) < 2:
        raise ValueError(f"{cfg.table}: fewer than two training patients with two or more modalities")
    groups = param_groups(model, weight_decay=cfg.weight_decay)
    if encoder is not None:
        encoder.musk.train()
        groups += [dict(g, lr_scale=cfg.text_lr / cfg.lr) for g in param_groups(encoder.musk, cfg.weight_decay)]
    opt = build_adamw(groups, cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    sched = warmup_cosine(opt, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)
    loss_fn = TriModalClipLoss()
    history: list[dict] = []
    start = 0
    resume_path = out / "resume.pt"
    if cfg.resume and resume_path.is_file():
        state = torch.load(resume_path, map_location=cfg.device, weights_only=True)
        model.load_state_dict(state["model"])
        if encoder is not None:
            encoder.musk.load_state_dict(state["text_model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = int(state["epoch"]), list(state["history"])
    amp = torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16) if cfg.amp else nullcontext()
    for epoch in range(start, cfg.epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train))
        losses, t0 = [], time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"stage 1 epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for step in bar:
            batch = [train[i] for i in order[step * cfg.batch_size:(step + 1) * cfg.batch_size]]
            with amp:
                emb, pres = _forward(model, batch, reports, report_index, cfg.max_patches, rng, cfg.device)
                loss, parts = loss_fn({k: v.float() for k, v in emb.items()}, pres, model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.time() - t0}
        if held_out:
            e, p = embed_patients(model, held_out, reports, report_index, cfg.max_patches, device=cfg.device)
            record["retrieval"] = cross_modal_retrieval(e, p)
        history.append(record)
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch + 1, "history": history}
        if encoder is not None:
            state["text_model"] = encoder.musk.state_dict()
        with atomic_path(resume_path, suffix=".pt.tmp") as tmp:
            torch.save(state, tmp)
    model.eval()
    save_stage1(model, out / STAGE1_WEIGHTS)
    save_aggregator(model.aggregator, out / AGGREGATOR_WEIGHTS)
    if encoder is not None:
        openmusk.save_checkpoint(encoder.musk, kept)
    if prep is not None:
        prep.save(out / "rna_preprocessor.json")
    write_json(out / "config.json", dataclasses.asdict(cfg))
    metrics = {"history": history, "final": history[-1] if history else {}, "problems": cohort.problems,
               "n_train": len(train), "n_held_out": len(held_out)}
    write_json(out / "metrics.json", metrics)
    if history:
        _plot(history, out / "training.png")
    return metrics
