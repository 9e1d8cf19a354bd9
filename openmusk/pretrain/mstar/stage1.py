"""mSTAR stage 1: pretrain a slide aggregator against reports and RNA-seq with tri-modal CLIP losses.

One epoch visits every training patient that has at least two modalities; each step reads a random
subset of at most ``max_patches`` patches per slide, so memory does not grow with slide size.
Under ``torchrun`` each rank embeds its share of every global batch (DistributedDataParallel),
the CLIP loss gathers the embeddings of all ranks with their gradients, and rank 0 writes files.
After every epoch the state is written atomically (``resume.pt``) and cross-modal retrieval on the
held-out patients is logged; at the end the model, the aggregator alone (for
``openmusk mil train --init-aggregator``), the RNA preprocessing, metrics and a plot are written.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from openmusk.core.dist import barrier, init_distributed, is_main, rank, world_size
from openmusk.core.io import save_figure, write_json
from openmusk.mil.cohort import BagDataset, PatientRecord, collate_bags
from openmusk.pretrain.mstar.cohort import read_pretrain_cohort, read_rna_table
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig
from openmusk.pretrain.mstar.loss import TriModalClipLoss
from openmusk.pretrain.mstar.model import (AGGREGATOR_WEIGHTS, REPORT_ENCODER_WEIGHTS, STAGE1_WEIGHTS, MstarArch,
                                           MstarModel, ReportEncoder, save_stage1)
from openmusk.pretrain.mstar.rna import RnaPreprocessor

__all__ = ["pretrain_aggregator", "embed_patients", "retrieval_between_modalities", "MODALITIES"]

MODALITIES = ("slide", "report", "rna")


def _attach_rna(patients: Sequence[PatientRecord], rna_table: str, n_genes: int) -> RnaPreprocessor | None:
    """Fit the RNA preprocessing on training patients and store each patient's processed profile."""
    if not rna_table:
        return None
    cases, genes, counts = read_rna_table(rna_table)
    row = {c: i for i, c in enumerate(cases)}
    train = [row[p.patient_id] for p in patients if p.split == "train" and p.patient_id in row]
    if len(train) < 2:
        raise ValueError(f"{rna_table}: fewer than two training patients have RNA-seq")
    prep = RnaPreprocessor(n_genes=n_genes).fit(counts[train], genes)
    processed = prep.transform(counts, genes)
    for p in patients:
        if p.patient_id in row:
            p.rna = processed[row[p.patient_id]]
    return prep


def _present(patients: Sequence[PatientRecord]) -> dict[str, np.ndarray]:
    """Which modality each patient has."""
    return {"slide": np.array([bool(p.feature_files) for p in patients]),
            "report": np.array([bool(p.report) for p in patients]),
            "rna": np.array([p.rna is not None for p in patients])}


def _slide_batch(patients: Sequence[PatientRecord], max_patches: int, rng: np.random.Generator,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded patch features (B, N, D) and mask of the patients' bags, at most ``max_patches`` rows
    each (0 = all), read and padded by ``openmusk.mil``'s dataset and collate."""
    bags = BagDataset(patients, max_instances=max_patches or None, seed=rng)
    batch = collate_bags([bags[i] for i in range(len(bags))])
    return batch["features"].to(device), batch["mask"].to(device)


def _forward(model: MstarModel, patients: Sequence[PatientRecord], reports: torch.Tensor | ReportEncoder,
             report_index: dict[str, int], max_patches: int, rng: np.random.Generator,
             device: torch.device, pad_to: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Embeddings of every modality for a batch (zeros where absent) and the presence masks; ``pad_to``
    adds absent rows (equal shapes on every rank) and a zero row set for every modality nobody has."""
    b = max(len(patients), pad_to)
    present = {k: torch.from_numpy(np.pad(v, (0, b - len(v)))).to(device) for k, v in _present(patients).items()}
    emb: dict[str, torch.Tensor] = {}

    def scatter(name: str, idx: list[int], out: torch.Tensor) -> None:
        emb[name] = torch.zeros(b, out.shape[1], device=device, dtype=out.dtype).index_copy(
            0, torch.tensor(idx, device=device), out)

    idx = present["slide"].nonzero().flatten().tolist()
    if idx:
        scatter("slide", idx, model.encode_slide(*_slide_batch([patients[i] for i in idx], max_patches, rng, device)))
    idx = present["report"].nonzero().flatten().tolist()
    if idx:
        if isinstance(reports, ReportEncoder):
            text = reports([patients[i].report for i in idx])
        else:
            text = reports[[report_index[patients[i].patient_id] for i in idx]].to(device)
        scatter("report", idx, model.encode_report(text))
    idx = present["rna"].nonzero().flatten().tolist()
    if idx and model.rna_encoder is not None:
        scatter("rna", idx, model.encode_rna(torch.from_numpy(np.stack([patients[i].rna for i in idx])).to(device)))
    if pad_to:  # the same modalities on every rank, so that the gathers (and their backward) match
        for name in ("slide", "report") + (("rna",) if model.rna_encoder is not None else ()):
            if name not in emb:  # a leaf that needs a gradient, so its gather takes part in the backward
                emb[name] = torch.zeros(b, model.arch.embed_dim, device=device, requires_grad=True)
                present[name] = torch.zeros(b, dtype=torch.bool, device=device)
    return emb, {k: present[k] for k in emb}


class _Step(torch.nn.Module):
    """One training step's forward (embeddings of this rank's patients + the gathered CLIP loss), as a
    module so DistributedDataParallel can wrap it; ``text`` is MUSK's language side when tuned."""

    def __init__(self, model: MstarModel, text: torch.nn.Module | None):
        super().__init__()
        self.model, self.text = model, text
        self.loss_fn = TriModalClipLoss()

    def forward(self, patients: Sequence[PatientRecord], reports: torch.Tensor | ReportEncoder,
                report_index: dict[str, int], max_patches: int, rng: np.random.Generator, device: torch.device,
                pad_to: int) -> torch.Tensor:
        """The tri-modal CLIP loss of the global batch (the same value on every rank)."""
        emb, pres = _forward(self.model, patients, reports, report_index, max_patches, rng, device, pad_to)
        return self.loss_fn({k: v.float() for k, v in emb.items()}, pres, self.model.logit_scale)[0]


@torch.no_grad()
def embed_patients(model: MstarModel, patients: Sequence[PatientRecord], reports: torch.Tensor | ReportEncoder,
                   report_index: dict[str, int], max_patches: int = 0, batch_size: int = 16,
                   device: str | torch.device = "cpu", seed: int = 0
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Shared-space embeddings of every modality of ``patients`` and presence masks (eval mode)."""
    from openmusk.core.runtime import resolve_device

    device = resolve_device(device)
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


def retrieval_between_modalities(emb: dict[str, np.ndarray], present: dict[str, np.ndarray],
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
                # ties count against the query: a collapsed model (all scores equal) ranks last
                rank = (s >= np.diag(s)[:, None]).sum(1) - 1
                res = {f"R@{k}": float((rank < k).mean()) for k in ks}
                res.update({f"chance@{k}": min(1.0, k / len(rows)) for k in ks})
                res["n"] = int(len(rows))
                out[name] = res
    return out


def _frozen_reports(cfg: AggregatorPretrainConfig, encoder: ReportEncoder, patients: Sequence[PatientRecord],
                    out_dir: Path, progress: bool = True) -> tuple[torch.Tensor, dict[str, int]]:
    """Report embeddings of every patient with a report, by :func:`openmusk.text.embed_reports`
    (the vectors mil gives the same reports), cached in ``out_dir/report_embeddings.h5``."""
    from openmusk.text.report import embed_reports

    with_report = [p for p in patients if p.report]
    if not with_report:
        return torch.zeros(0, encoder.dim), {}
    emb = embed_reports([p.report for p in with_report], encoder.musk, encoder.tokenizer,
                        cache=out_dir / "report_embeddings.h5", model_name=f"{cfg.arch}-max_len{cfg.report_max_len}",
                        progress=progress, max_len=cfg.report_max_len)
    return torch.from_numpy(emb), {p.patient_id: i for i, p in enumerate(with_report)}


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
    save_figure(fig, path, dpi=120)


def pretrain_aggregator(cfg: AggregatorPretrainConfig, progress: bool = True) -> dict:
    """Run stage 1 as configured; returns the final metrics (also written to ``output_dir/metrics.json``)."""
    from tqdm.auto import tqdm

    from openmusk.core.config import config_to_dict
    from openmusk.core.optim import param_groups
    from openmusk.core.runtime import autocast, resolve_device, resolve_precision
    from openmusk.mil.models import save_aggregator
    from openmusk.mil.trainer import Optimization, load_resume, save_resume
    from openmusk.model import create_model, save_checkpoint
    from openmusk.text import get_tokenizer

    distributed = init_distributed()
    world, me = world_size(), rank()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)  # once, not per step
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    patients, feature_dim, problems = read_pretrain_cohort(cfg.table, cfg.val_fraction, cfg.seed)
    prep = _attach_rna(patients, cfg.rna_table, cfg.n_genes)
    kept = out / REPORT_ENCODER_WEIGHTS
    random_text = not cfg.weights or cfg.weights.startswith("random")
    resume_kept = random_text and cfg.resume and kept.is_file()
    barrier()  # every rank has looked before rank 0 writes
    if resume_kept:  # resuming with the random encoder saved before
        musk = create_model(pretrained=str(kept), device=device)
    else:
        musk = create_model(cfg.arch, pretrained=cfg.weights or "random", device=device)  # same seed on all ranks
        if random_text and is_main():  # a random report encoder must be kept: zero-shot needs the very same one
            save_checkpoint(musk, kept)
    encoder = ReportEncoder(musk, get_tokenizer(), cfg.report_max_len)
    arch = MstarArch(cfg.aggregator, feature_dim, cfg.hidden_dim, cfg.embed_dim, encoder.dim,
                     len(prep.genes) if prep else 0, list(cfg.rna_hidden))
    model = MstarModel(arch, cfg.dropout).to(device)
    if cfg.text_mode == "frozen":
        if not is_main():
            barrier()  # rank 0 fills the embedding cache first, the others then read it
        reports, report_index = _frozen_reports(cfg, encoder, patients, out, progress and is_main())
        if distributed and is_main():
            barrier()
        del musk, encoder
        encoder = None
    else:
        reports, report_index = encoder, {}
    train = [p for p in patients if p.split == "train" and sum(int(v[0]) for v in _present([p]).values()) >= 2]
    held_out = [p for p in patients if p.split != "train"]
    if len(train) < 2:
        raise ValueError(f"{cfg.table}: fewer than two training patients with two or more modalities")
    groups = param_groups(model, weight_decay=cfg.weight_decay)
    if encoder is not None:
        encoder.musk.train()
        groups += [dict(g, lr_scale=cfg.text_lr / cfg.lr) for g in param_groups(encoder.musk, cfg.weight_decay)]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    opt = Optimization(groups, cfg.lr, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch,
                       betas=(0.9, 0.95), clip_norm=1.0, precision=cfg.precision, device=device)
    step_module = _Step(model, encoder.musk if encoder is not None else None)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(step_module, find_unused_parameters=True,
                                              device_ids=[device.index] if device.type == "cuda" else None)
    history: list[dict] = []
    start = 0
    resume_path = out / "resume.pt"
    state = load_resume(resume_path, device) if cfg.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        if encoder is not None:
            encoder.musk.load_state_dict(state["text_model"])
        opt.load_state_dict(state)
        start, history = int(state["epoch"]), list(state["history"])
    for epoch in range(start, cfg.epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train))
        losses, t0 = [], time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"stage 1 epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (progress and is_main()))
        for step in bar:
            batch = [train[i] for i in order[step * cfg.batch_size:(step + 1) * cfg.batch_size]]
            local = batch[me::world]  # this rank's share; padded so every rank gathers equal shapes
            with autocast(device, precision):
                loss = step_module(local, reports, report_index, cfg.max_patches, rng, device,
                                   math.ceil(len(batch) / world) if distributed else 0)
            opt.step(loss)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.time() - t0}
        if held_out and is_main():
            e, p = embed_patients(model, held_out, reports, report_index, cfg.max_patches, device=device)
            record["retrieval"] = retrieval_between_modalities(e, p)
        history.append(record)
        state = {"model": model.state_dict(), **opt.state_dict(), "epoch": epoch + 1, "history": history}
        if encoder is not None:
            state["text_model"] = encoder.musk.state_dict()
        if is_main():
            save_resume(resume_path, state)
        barrier()
    model.eval()
    metrics = {"history": history, "final": history[-1] if history else {}, "problems": problems,
               "n_train": len(train), "n_held_out": len(held_out), "world_size": world}
    if not is_main():
        return metrics
    save_stage1(model, out / STAGE1_WEIGHTS)
    save_aggregator(model.aggregator, out / AGGREGATOR_WEIGHTS)
    if encoder is not None:
        save_checkpoint(encoder.musk, kept)
    if prep is not None:
        prep.save(out / "rna_preprocessor.json")
    write_json(out / "config.json", config_to_dict(cfg))
    write_json(out / "metrics.json", metrics)
    if history:
        _plot(history, out / "training.png")
    return metrics
