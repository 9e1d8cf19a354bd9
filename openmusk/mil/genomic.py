"""Slide-level survival over a bag of patch features and genomics: MCAT and PORPOISE here,
MOTCat and CMTA in :mod:`openmusk.mil.genomic_models`; genomic groups from signature tables.

Both map a bag of patch features (B, N, D) with a padding mask and a genomic vector (B, G) to
logits over discrete time bins (B, n_bins), the input of the discrete-time NLL survival loss.
* MCAT (Chen et al., ICCV 2021): each genomic pathway group is embedded by a self-normalising net
  and used as a query that co-attends over the patch features; transformers and gated attention
  pool both token sets, which are concatenated.
* PORPOISE (Chen et al., Cancer Cell 2022): gated ABMIL over patches, a self-normalising net over
  the whole genomic vector, late fusion by a gated Kronecker product (or concatenation).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from openmusk.data.features_h5 import features_shape
from openmusk.mil.cohort import BagDataset, PatientRecord, collate_bags
from openmusk.mil.models import _as_batch
from openmusk.mil.trainer import FitConfig

__all__ = ["pathway_groups", "read_signatures", "signature_groups", "read_genomics", "train_genomic",
           "build_genomic_model", "SNNBlock", "GatedAttentionPool", "MCAT", "PORPOISE", "KroneckerFusion",
           "GenomicBagDataset", "collate_genomic", "cross_validate_genomic", "GENOMIC_MODELS",
           "refuse_genomic"]


def pathway_groups(gene_names: Sequence[str], groups: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """Column indices of each pathway's genes in ``gene_names``; a pathway with no gene present is an error."""
    index = {str(g): i for i, g in enumerate(gene_names)}
    out: dict[str, list[int]] = {}
    for name, genes in groups.items():
        cols = [index[g] for g in genes if g in index]
        if not cols:
            raise ValueError(f"pathway {name!r}: none of its {len(genes)} genes is in the genomic table")
        out[name] = cols
    return out


def read_signatures(path: str) -> dict[str, list[str]]:
    """Gene groups from a signatures CSV as MCAT documents it: one column per group, gene symbols
    down each column, shorter columns padded with blanks (MCAT's ``signatures.csv`` has the six
    families: tumour suppressors, oncogenes, protein kinases, differentiation markers,
    transcription factors, cytokines and growth factors)."""
    import pandas as pd

    table = pd.read_csv(path, dtype=str)
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise ValueError(f"{path}: a signatures table needs one column per group and gene symbols in the rows")
    groups = {str(c): list(dict.fromkeys(g.strip() for g in table[c].dropna() if g.strip())) for c in table.columns}
    empty = [g for g, genes in groups.items() if not genes]
    if empty:
        raise ValueError(f"{path}: group column(s) {empty} list no gene")
    return groups


def signature_groups(columns: Sequence[str], signatures: Mapping[str, Sequence[str]],
                     suffixes: Sequence[str] = ("", "_mut", "_cnv", "_rnaseq")) -> dict[str, list[int]]:
    """Column indices of each group in a genomics table whose columns are genes, optionally with
    MCAT's data-type suffixes (``TP53_mut``, ``TP53_cnv``, ``TP53_rnaseq``); a group none of whose
    genes is in the table is an error naming it."""
    index = {str(c): i for i, c in enumerate(columns)}
    out: dict[str, list[int]] = {}
    for name, genes in signatures.items():
        cols = sorted({index[g + s] for g in genes for s in suffixes if g + s in index})
        if not cols:
            raise ValueError(f"genomic group {name!r}: none of its {len(genes)} genes (e.g. {list(genes)[:3]}) "
                             f"is a column of the genomics table")
        out[name] = cols
    return out


class SNNBlock(nn.Sequential):
    """Self-normalising MLP (Linear + ELU + alpha-dropout) used for genomic inputs by MCAT/PORPOISE."""

    def __init__(self, in_dim: int, dims: Sequence[int] = (256, 256), dropout: float = 0.25):
        layers: list[nn.Module] = []
        for d in dims:
            layers += [nn.Linear(in_dim, d), nn.ELU(), nn.AlphaDropout(dropout)]
            in_dim = d
        super().__init__(*layers)


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al.): softmax over tokens of tanh(Vx) * sigmoid(Ux) scores."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.25):
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, dim), mask (B, N) True = valid -> pooled (B, dim), attention (B, N)."""
        score = self.w(self.v(x) * self.u(x)).squeeze(-1)
        if mask is not None:
            score = score.masked_fill(~mask, float("-inf"))
        att = torch.softmax(score.float(), dim=-1).to(x.dtype)
        return torch.einsum("bn,bnd->bd", att, x), att


def _omics(omics: torch.Tensor, n: int) -> torch.Tensor:
    """Check the genomic input is (B, n) (or (n,))."""
    if omics.ndim == 1:
        omics = omics.unsqueeze(0)
    if omics.ndim != 2 or omics.shape[1] != n:
        raise ValueError(f"genomic input must be (B, {n}), got {tuple(omics.shape)}")
    return omics


class _BatchForward(nn.Module):
    """The ``openmusk.mil`` trainer's calling convention: ``forward(batch) -> {"logits", "attention"}``."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Batch dict with ``features`` (B, N, D), ``mask`` (B, N) and ``omics`` (B, G)."""
        if batch.get("omics") is None:
            raise ValueError(f"{type(self).__name__} needs genomic data ('omics') in the batch")
        return {"logits": self.hazard_logits(batch["features"], batch["omics"], batch.get("mask")),
                "attention": None}

    def _embedders(self, in_dim: int, groups: Mapping[str, Sequence[int]], dim: int, dropout: float) -> None:
        """The co-attention models' shared inputs: a patch projection and one SNN per genomic group."""
        self.group_names = list(groups)
        self.group_index = [list(map(int, v)) for v in groups.values()]
        self.n_omics = 1 + max(max(v) for v in self.group_index)
        self.path_fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.omic_nets = nn.ModuleList([SNNBlock(len(v), (dim, dim), dropout) for v in self.group_index])

    def _embed(self, features: torch.Tensor, omics: torch.Tensor, mask: torch.Tensor | None):
        """(patches, mask, projected patches (B, N, dim), one token per genomic group (B, G, dim))."""
        x, mask = _as_batch(features, mask)
        omics = _omics(omics, self.n_omics)
        h_path = self.path_fc(x)   # before the genomic nets: the order their dropout draws in
        h_omic = torch.stack([net(omics[:, idx]) for net, idx in zip(self.omic_nets, self.group_index)], dim=1)
        return x, mask, h_path, h_omic


class MCAT(_BatchForward):
    """Multimodal co-attention transformer: genomic pathway tokens attend over the patch bag."""

    def __init__(self, in_dim: int, groups: Mapping[str, Sequence[int]], n_bins: int = 4, dim: int = 256,
                 heads: int = 4, depth: int = 2, dropout: float = 0.25):
        super().__init__()
        self._embedders(in_dim, groups, dim, dropout)
        self.coattn = nn.MultiheadAttention(dim, heads, batch_first=True)

        def tfm() -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, activation="relu", batch_first=True)
            return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

        self.path_tfm, self.omic_tfm = tfm(), tfm()
        self.path_pool = GatedAttentionPool(dim, dim, dropout)
        self.omic_pool = GatedAttentionPool(dim, dim, dropout)
        self.path_rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.omic_rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.fusion = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.classifier = nn.Linear(dim, n_bins)

    def hazard_logits(self, features: torch.Tensor, omics: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch bag (B, N, D) + genomics (B, G) -> hazard logits (B, n_bins)."""
        x, mask, h_path, h_omic = self._embed(features, omics, mask)
        co, _ = self.coattn(h_omic, h_path, h_path, key_padding_mask=~mask, need_weights=False)
        p, _ = self.path_pool(self.path_tfm(co))
        g, _ = self.omic_pool(self.omic_tfm(h_omic))
        return self.classifier(self.fusion(torch.cat([self.path_rho(p), self.omic_rho(g)], dim=-1)))


class KroneckerFusion(nn.Module):
    """Gated Kronecker (bilinear) fusion of PORPOISE/Pathomic Fusion: gate each modality by the other, outer product."""

    def __init__(self, dim1: int, dim2: int, gate_dim: int = 32, out_dim: int = 128, dropout: float = 0.25):
        super().__init__()
        self.h1, self.h2 = nn.Linear(dim1, gate_dim), nn.Linear(dim2, gate_dim)
        self.z1, self.z2 = nn.Bilinear(dim1, dim2, gate_dim), nn.Bilinear(dim1, dim2, gate_dim)
        self.post = nn.Sequential(nn.Dropout(dropout), nn.Linear((gate_dim + 1) ** 2, out_dim), nn.ReLU(),
                                  nn.Dropout(dropout))
        self.skip = nn.Sequential(nn.Linear(out_dim + 2 * (gate_dim + 1), out_dim), nn.ReLU())

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """(B, dim1), (B, dim2) -> (B, out_dim)."""
        o1 = torch.relu(self.h1(v1)) * torch.sigmoid(self.z1(v1, v2))
        o2 = torch.relu(self.h2(v2)) * torch.sigmoid(self.z2(v1, v2))
        one = torch.ones_like(o1[:, :1])
        o1, o2 = torch.cat([o1, one], -1), torch.cat([o2, one], -1)
        fused = self.post(torch.einsum("bi,bj->bij", o1, o2).flatten(1))
        return self.skip(torch.cat([fused, o1, o2], dim=-1))


class PORPOISE(_BatchForward):
    """Late fusion of gated ABMIL (patches) and an SNN (genomics) by a Kronecker product or concatenation."""

    def __init__(self, in_dim: int, n_omics: int, n_bins: int = 4, dim: int = 256, fusion: str = "kronecker",
                 dropout: float = 0.25):
        super().__init__()
        if fusion not in ("kronecker", "concat"):
            raise ValueError(f"PORPOISE fusion must be 'kronecker' or 'concat', got {fusion!r}")
        self.n_omics = n_omics
        self.path_fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.path_pool = GatedAttentionPool(dim, dim, dropout)
        self.path_rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.omic_net = SNNBlock(n_omics, (dim, dim), dropout)
        if fusion == "kronecker":
            self.fusion = KroneckerFusion(dim, dim, gate_dim=32, out_dim=dim, dropout=dropout)
        else:
            self.fusion = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU())
        self.fusion_kind = fusion
        self.classifier = nn.Linear(dim, n_bins)

    def hazard_logits(self, features: torch.Tensor, omics: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch bag (B, N, D) + genomics (B, G) -> hazard logits (B, n_bins)."""
        x, mask = _as_batch(features, mask)
        omics = _omics(omics, self.n_omics)
        p, _ = self.path_pool(self.path_fc(x), mask)
        p, g = self.path_rho(p), self.omic_net(omics)
        fused = self.fusion(p, g) if self.fusion_kind == "kronecker" else self.fusion(torch.cat([p, g], -1))
        return self.classifier(fused)


GENOMIC_MODELS = ("mcat", "porpoise", "motcat", "cmta")


def refuse_genomic(model: str, command: str, where: Any) -> None:
    """A clear error for commands that apply slide-only models (predict, ablate) to a genomic run."""
    if model in GENOMIC_MODELS:
        raise ValueError(f"{where}: `openmusk {command}` does not support model {model!r} (slide features plus a "
                         f"genomics table); its out-of-fold risks and c-index are in the `mil train` output "
                         f"(metrics.json and the fold folders)")


def build_genomic_model(model: str, in_dim: int, groups: Mapping[str, Sequence[int]], n_omics: int,
                        n_bins: int = 4, dim: int = 256, fusion: str = "kronecker",
                        dropout: float = 0.25) -> nn.Module:
    """One of ``GENOMIC_MODELS`` by name (PORPOISE uses the whole vector, the others the groups)."""
    from openmusk.mil.genomic_models import CMTA, MOTCat

    if model == "mcat":
        return MCAT(in_dim, groups, n_bins, dim, dropout=dropout)
    if model == "porpoise":
        return PORPOISE(in_dim, n_omics, n_bins, dim, fusion, dropout=dropout)
    if model == "motcat":
        return MOTCat(in_dim, groups, n_bins, dim, dropout=dropout)
    if model == "cmta":
        return CMTA(in_dim, groups, n_bins, dim, heads=8 if dim >= 128 else max(1, dim // 16), dropout=dropout)
    raise ValueError(f"genomic model must be one of {GENOMIC_MODELS}, got {model!r}")


class GenomicBagDataset(BagDataset):
    """``openmusk.mil`` bag dicts plus each patient's genomic vector as ``omics``."""

    def __init__(self, records: Sequence[PatientRecord], omics: np.ndarray, bins: np.ndarray | None = None,
                 max_instances: int | None = None, seed: int = 0):
        super().__init__(records, bins=bins, max_instances=max_instances, seed=seed)
        self.omics = np.asarray(omics, np.float32)
        if len(self.omics) != len(self.records):
            raise ValueError(f"{len(self.omics)} genomic rows for {len(self.records)} patients")

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item["omics"] = torch.from_numpy(self.omics[i])
        return item


def collate_genomic(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``collate_bags`` plus the stacked genomic vectors."""
    batch = collate_bags(samples)
    batch["omics"] = torch.stack([s["omics"] for s in samples])
    return batch


def cross_validate_genomic(records: Sequence[PatientRecord], omics: Mapping[str, np.ndarray],
                           groups: Mapping[str, Sequence[int]], out_dir: str, model: str = "mcat",
                           config: FitConfig | None = None, folds: int = 5, n_bins: int = 4, dim: int = 256,
                           fusion: str = "kronecker", dropout: float = 0.25, nll_alpha: float = 0.0,
                           max_instances: int | None = None,
                           val_fraction: float = 0.2, n_resamples: int = 1000,
                           log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """k-fold CV of a genomic survival model (``GENOMIC_MODELS``) with the discrete-time NLL through ``openmusk.mil.cv``.

    ``omics`` maps patient id -> genomic vector (log-scale expression); per fold it is z-scored
    with the training patients' mean and std. ``groups`` maps pathway -> column indices (all but PORPOISE).
    """
    from openmusk.mil.cv import cross_validate
    from openmusk.mil.losses import assign_bins, time_bins
    from openmusk.mil.tasks import SurvivalTask

    if model not in GENOMIC_MODELS:
        raise ValueError(f"model must be one of {GENOMIC_MODELS}, got {model!r}")
    missing = [r.patient_id for r in records if r.patient_id not in omics]
    if missing:
        raise ValueError(f"no genomic profile for {len(missing)} patients, e.g. {missing[:5]}")
    config = config or FitConfig()
    in_dim = features_shape(records[0].feature_files[0])[1]
    fold: dict[str, np.ndarray] = {}

    def build(train_recs: list) -> tuple[SurvivalTask, nn.Module]:
        x = np.stack([omics[r.patient_id] for r in train_recs]).astype(np.float64)
        fold["mean"], fold["std"] = x.mean(0), np.where(x.std(0) > 1e-8, x.std(0), 1.0)
        edges = time_bins(np.array([r.time for r in train_recs]), np.array([r.event for r in train_recs]), n_bins)
        net = build_genomic_model(model, in_dim, groups, x.shape[1], n_bins, dim, fusion, dropout)
        return SurvivalTask("nll", edges.tolist(), nll_alpha), net

    def make_dataset(recs: list, task: SurvivalTask, train: bool) -> GenomicBagDataset:
        x = (np.stack([omics[r.patient_id] for r in recs]) - fold["mean"]) / fold["std"]
        bins = assign_bins(np.array([r.time for r in recs]), np.asarray(task.edges))
        return GenomicBagDataset(recs, x, bins, max_instances if train else None, seed=config.seed)

    return cross_validate(records, np.array([r.event for r in records]), build, make_dataset, config, out_dir,
                          folds=folds, val_fraction=val_fraction, balanced_sampler=False,
                          collate_fn=collate_genomic, n_resamples=n_resamples, log=log, progress=progress)


def read_genomics(path: str, patient_column: str = "patient_id") -> tuple[list[str], list[str], np.ndarray]:
    """Patient ids, gene (column) names and the (P, G) float matrix of a genomics CSV; a non-numeric
    or missing value is an error naming its row and column."""
    import pandas as pd

    table = pd.read_csv(path, dtype={patient_column: str})
    if patient_column not in table.columns:
        raise ValueError(f"{path}: missing column {patient_column!r}; found {list(table.columns)[:10]}")
    genes = [c for c in table.columns if c != patient_column]
    values = table[genes].apply(pd.to_numeric, errors="coerce")
    bad = np.argwhere(values.isna().to_numpy())
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"{path}: row {r + 2} column {genes[c]!r}: {table[genes[c]].iloc[r]!r} is not a number "
                         f"({len(bad)} such cells)")
    if table[patient_column].duplicated().any():
        raise ValueError(f"{path}: patient {table[patient_column][table[patient_column].duplicated()].iloc[0]!r} "
                         f"has more than one row")
    return table[patient_column].tolist(), genes, values.to_numpy(np.float64)


def train_genomic(config: Any, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """``openmusk mil train`` with ``model: mcat | porpoise | motcat | cmta``: the cohort's slide features
    plus ``config.genomics``, gene groups from ``config.signatures``; same folds, outputs and pooled
    survival metrics as the other survival models (attention maps are not written)."""
    from pathlib import Path

    from openmusk.core.io import write_json
    from openmusk.mil.api import _fit_config, _load_cohort, _pooled_survival

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())
    records, _, dim, skipped, _ = _load_cohort(config, log, progress)
    ids, genes, x = read_genomics(config.genomics, config.patient_column)
    omics = dict(zip(ids, x))
    without = [r.patient_id for r in records if r.patient_id not in omics]
    for pid in without:
        log(f"skipped {pid}: no row in {config.genomics}")
    records = [r for r in records if r.patient_id in omics]
    groups = signature_groups(genes, read_signatures(config.signatures)) if config.signatures else \
        {"all": list(range(len(genes)))}
    log(f"{len(records)} patients, {len(genes)} genomic features in {len(groups)} groups "
        f"({', '.join(f'{k}: {len(v)}' for k, v in groups.items())}), model {config.model}")
    result = cross_validate_genomic(records, omics, groups, str(out), config.model, _fit_config(config), config.folds,
                                    config.n_bins, config.fusion_hidden, dropout=config.dropout,
                                    nll_alpha=config.nll_alpha, max_instances=config.max_instances,
                                    val_fraction=config.val_fraction, n_resamples=config.bootstrap, log=log,
                                    progress=progress)
    metrics = {"summary": result["summary"], "pooled": _pooled_survival(result["oof"], config, records),
               "folds": result["folds"], "skipped": len(skipped) + len(without),
               "groups": {k: [genes[i] for i in v] for k, v in groups.items()}}
    write_json(out / "metrics.json", metrics)
    mean = result["summary"]["mean"]
    if mean:
        log(f"c_index over {config.folds} folds: {mean['value']:.3f} [{mean['low']:.3f}, {mean['high']:.3f}]; "
            f"results in {out}")
    return metrics
