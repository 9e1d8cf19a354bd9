"""RNA-seq for mSTAR: log1p, gene selection by variance and standardisation fitted on training patients.

The preprocessing is fitted once on the training patients only (no leakage from validation or
test patients), saved as JSON beside the aggregator, and applied unchanged at inference.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from openmusk.core.io import read_json, write_json

__all__ = ["RnaPreprocessor", "RnaEncoder"]


@dataclass
class RnaPreprocessor:
    """``log1p`` -> keep the ``n_genes`` most variable genes -> z-score with training mean / std."""

    n_genes: int = 2000
    genes: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def fitted(self) -> bool:
        """True once ``fit`` has chosen the genes."""
        return bool(self.genes)

    def fit(self, counts: np.ndarray, gene_names: Sequence[str]) -> "RnaPreprocessor":
        """Choose genes and standardisation from ``counts`` (patients x genes, non-negative) of training patients."""
        x = self._log(counts, gene_names, "fit")
        var = x.var(axis=0)
        k = min(self.n_genes, x.shape[1])
        keep = np.sort(np.argsort(-var, kind="stable")[:k])
        sel = x[:, keep]
        std = sel.std(axis=0)
        self.genes = [str(gene_names[i]) for i in keep]
        self.mean = sel.mean(axis=0).astype(float).tolist()
        self.std = np.where(std > 1e-8, std, 1.0).astype(float).tolist()
        return self

    def transform(self, counts: np.ndarray, gene_names: Sequence[str]) -> np.ndarray:
        """Apply the fitted preprocessing; genes are matched by name, so column order may differ."""
        if not self.fitted:
            raise RuntimeError("RnaPreprocessor.transform called before fit")
        x = self._log(counts, gene_names, "transform")
        index = {str(g): i for i, g in enumerate(gene_names)}
        missing = [g for g in self.genes if g not in index]
        if missing:
            raise ValueError(f"RNA table lacks {len(missing)} genes chosen at fit time, e.g. {missing[:5]}")
        cols = [index[g] for g in self.genes]
        return ((x[:, cols] - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted state as JSON (atomically)."""
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RnaPreprocessor":
        """Read a state written by ``save``."""
        return cls(**read_json(path))

    @staticmethod
    def _log(counts: np.ndarray, gene_names: Sequence[str], what: str) -> np.ndarray:
        """Validate shape and values, then ``log1p``."""
        x = np.asarray(counts, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(gene_names):
            raise ValueError(f"RNA {what}: counts of shape {x.shape} do not match {len(gene_names)} gene names")
        bad = ~np.isfinite(x) | (x < 0)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"RNA {what}: row {r}, gene {gene_names[c]!r} has value {x[r, c]} "
                             "(expected non-negative finite counts or TPM)")
        return np.log1p(x)


class RnaEncoder(nn.Module):
    """MLP from standardised expression to the shared embedding space (SNN-style: SELU + alpha-dropout)."""

    def __init__(self, n_genes: int, out_dim: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.25):
        super().__init__()
        layers: list[nn.Module] = []
        d = n_genes
        for h in hidden:
            layers += [nn.Linear(d, h), nn.SELU(), nn.AlphaDropout(dropout)]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_genes) -> (B, out_dim)."""
        return self.net(x)
