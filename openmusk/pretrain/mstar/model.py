"""The mSTAR stage-1 model: slide aggregator + projections into one space shared with reports and RNA.

``MstarModel`` owns the trainable parts (an ``openmusk.mil`` aggregator, the slide / report
projections, the RNA encoder, the temperature); ``ReportEncoder`` runs reports through MUSK's
language side by the one long-text embedding (:func:`openmusk.text.report_embeddings`), so a
report gets the vector ``openmusk.mil`` and ``openmusk embed texts`` give it; ``aggregator_tokens``
gives the aggregator's per-patch output tokens (its ``tokens`` method), the targets of stage 2.
``MstarPretrained`` reloads everything stage 1 wrote.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmusk.mil.models import build_aggregator
from openmusk.pretrain.mstar.rna import RnaEncoder, RnaPreprocessor

__all__ = ["MstarArch", "MstarModel", "ReportEncoder", "aggregator_tokens", "MstarPretrained",
           "STAGE1_WEIGHTS", "AGGREGATOR_WEIGHTS",
           "REPORT_ENCODER_WEIGHTS"]

STAGE1_WEIGHTS = "mstar_stage1.safetensors"
AGGREGATOR_WEIGHTS = "aggregator.safetensors"
REPORT_ENCODER_WEIGHTS = "report_encoder.safetensors"


@dataclass
class MstarArch:
    """Sizes needed to rebuild an ``MstarModel`` (stored in the safetensors metadata)."""

    aggregator: str
    in_dim: int
    hidden_dim: int
    embed_dim: int
    text_dim: int
    n_genes: int = 0
    rna_hidden: list[int] = field(default_factory=lambda: [256, 256])


class MstarModel(nn.Module):
    """Aggregator and projections; every ``encode_*`` returns L2-normalised (B, embed_dim) embeddings."""

    def __init__(self, arch: MstarArch, dropout: float | None = None):
        super().__init__()
        self.arch = arch
        extra = {} if dropout is None else {"dropout": dropout}  # training-time only: weights do not depend on it
        self.aggregator = build_aggregator(arch.aggregator, arch.in_dim, arch.hidden_dim, **extra)
        self.slide_proj = nn.Linear(arch.hidden_dim, arch.embed_dim)
        self.report_proj = nn.Linear(arch.text_dim, arch.embed_dim)
        self.rna_encoder = RnaEncoder(arch.n_genes, arch.embed_dim, arch.rna_hidden, **extra) if arch.n_genes else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_slide(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch features (N, D) or (B, N, D) + mask -> slide embedding in the shared space."""
        emb, _ = self.aggregator(features, mask)
        return F.normalize(self.slide_proj(emb), dim=-1)

    def encode_report(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """MUSK report embeddings (B, text_dim) -> shared space."""
        return F.normalize(self.report_proj(text_embeddings), dim=-1)

    def encode_rna(self, expression: torch.Tensor) -> torch.Tensor:
        """Preprocessed expression (B, n_genes) -> shared space."""
        if self.rna_encoder is None:
            raise ValueError("this mSTAR model was trained without RNA-seq")
        return F.normalize(self.rna_encoder(expression), dim=-1)


class ReportEncoder(nn.Module):
    """MUSK's language side on reports: :func:`openmusk.text.report_embeddings` (windows of
    ``max_len`` tokens, piece-weighted mean, L2-normalised), differentiable when MUSK is tuned."""

    def __init__(self, musk: nn.Module, tokenizer, max_len: int = 100):
        super().__init__()
        self.musk, self.tokenizer, self.max_len = musk, tokenizer, max_len

    @property
    def dim(self) -> int:
        """Embedding size (MUSK's width)."""
        return self.musk.config.embed_dim

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """(B,) texts -> (B, D); an empty text is an error (a missing report is not a report)."""
        from openmusk.text.report import report_embeddings

        return report_embeddings(self.musk, self.tokenizer, list(texts), max_len=self.max_len)


def aggregator_tokens(aggregator: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The aggregator's output token of every patch of one bag, (N, D) -> (N, hidden): its
    ``tokens`` method (TransMIL: contextual tokens; ABMIL / mean pooling: instance embeddings)."""
    if not hasattr(aggregator, "tokens"):
        raise TypeError(f"{type(aggregator).__name__} has no tokens() method: no per-patch targets for stage 2")
    return aggregator.tokens(features)


def save_stage1(model: MstarModel, path: str | os.PathLike) -> None:
    """Write the whole stage-1 model as safetensors with its architecture in the metadata."""
    from safetensors.torch import save_file

    from openmusk.core.io import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors.tmp") as tmp:
        save_file(state, str(tmp), metadata={"mstar_arch": json.dumps(asdict(model.arch))})


def load_stage1(path: str | os.PathLike) -> MstarModel:
    """Rebuild an ``MstarModel`` from ``save_stage1`` output (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage-1 weights not found: {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "mstar_arch" not in meta:
        raise ValueError(f"{path}: not an mSTAR stage-1 file (no 'mstar_arch' metadata)")
    model = MstarModel(MstarArch(**json.loads(meta["mstar_arch"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


class MstarPretrained:
    """Everything stage 1 wrote to ``output_dir``: the model, its config, the RNA preprocessing and the
    report encoder."""

    def __init__(self, output_dir: str | os.PathLike, device: str | torch.device | None = "auto"):
        from openmusk.core.config import config_from_dict
        from openmusk.core.io import read_json
        from openmusk.core.runtime import resolve_device
        from openmusk.pretrain.mstar.config import AggregatorPretrainConfig

        self.output_dir = Path(output_dir)
        self.device = resolve_device(device)
        self.model = load_stage1(self.output_dir / STAGE1_WEIGHTS).to(self.device)
        config_file = self.output_dir / "config.json"
        self.config = config_from_dict(AggregatorPretrainConfig, read_json(config_file), where=str(config_file))
        rna = self.output_dir / "rna_preprocessor.json"
        self.rna = RnaPreprocessor.load(rna) if rna.is_file() else None
        self._reports: ReportEncoder | None = None

    @property
    def report_encoder(self) -> ReportEncoder:
        """MUSK's language side as stage 1 used it (its saved copy when tuned or random); built on first use."""
        if self._reports is None:
            from openmusk.model import create_model
            from openmusk.text import get_tokenizer

            kept = self.output_dir / REPORT_ENCODER_WEIGHTS
            musk = (create_model(pretrained=str(kept)) if kept.is_file()
                    else create_model(self.config.arch, pretrained=self.config.weights or "random"))
            self._reports = ReportEncoder(musk.to(self.device).eval(), get_tokenizer(), self.config.report_max_len)
        return self._reports

    @torch.no_grad()
    def embed_slides(self, bags: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Shared-space embeddings (S, embed_dim) of slides given as patch-feature arrays (N, D)."""
        self.model.eval()
        out = [self.model.encode_slide(torch.as_tensor(np.asarray(b), dtype=torch.float32, device=self.device))
               for b in bags]
        return torch.cat(out).cpu()

    @torch.no_grad()
    def raw_slide_features(self, bags: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Aggregator outputs (S, hidden_dim) before projection: features for few-shot probes."""
        self.model.eval()
        out = [self.model.aggregator(torch.as_tensor(np.asarray(b), dtype=torch.float32, device=self.device))[0]
               for b in bags]
        return torch.cat(out).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Shared-space embeddings (T, embed_dim) of reports or prompts."""
        self.report_encoder.eval()
        return self.model.encode_report(self.report_encoder(list(texts)).float()).cpu()
