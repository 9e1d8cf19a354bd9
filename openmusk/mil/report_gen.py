"""Pathology report generation from a slide's tile features, HistGen-style (mSTAR's seventh task family).

The model (``ReportGenerator``): tile features -> a local-global hierarchical encoder (tiles in
consecutive regions of ``region_size`` are mixed by a region transformer, pooled into region
tokens, which a slide transformer mixes), a cross-modal context module (a learned memory bank
that both the visual tokens and the word embeddings query, HistGen's shared context), and a
transformer decoder that cross-attends to the visual tokens. Words come from a word-level
vocabulary of the training reports (R2Gen/HistGen cleaning, rare words -> ``<unk>``). Training is
teacher forcing with cross-entropy; decoding is greedy or beam search. It lives under ``mil``
because it is a slide-level model over the same features files and bags as the MIL models.

>>> from openmusk.core.config import load_config
>>> result = train_report_generator(load_config(ReportGenConfig, "reports.yaml"))
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmusk.core.config import path_field
from openmusk.mil.report_metrics import clean_report, report_metrics

__all__ = ["Vocabulary", "ReportGenArch", "ReportGenerator", "ReportGenConfig", "train_report_generator",
           "load_report_generator", "generate_reports", "evaluate_reports", "read_report_table"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
WEIGHTS, VOCAB, ARCH = "report_generator.safetensors", "vocab.json", "arch.json"


class Vocabulary:
    """Word-level vocabulary: specials first, then training words seen at least ``min_count`` times."""

    def __init__(self, words: Sequence[str]):
        self.words = [PAD, BOS, EOS, UNK] + [w for w in words if w not in (PAD, BOS, EOS, UNK)]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, reports: Sequence[str], min_count: int = 1) -> "Vocabulary":
        """From the (training) reports, most frequent words first."""
        counts = Counter(w for r in reports for w in clean_report(r).split())
        return cls([w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """``<bos>`` word ids ``<eos>``, at most ``max_len`` words."""
        ids = [self.index.get(w, 3) for w in clean_report(text).split()[:max_len]]
        return [1] + ids + [2]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``, specials dropped."""
        out = []
        for i in ids:
            if i == 2:
                break
            if i > 3:
                out.append(self.words[i])
        return " ".join(out)


@dataclass
class ReportGenArch:
    """Sizes that rebuild a ReportGenerator (saved as ``arch.json``)."""

    in_dim: int
    vocab_size: int
    dim: int = 256
    heads: int = 8
    region_size: int = 64
    local_layers: int = 1
    global_layers: int = 1
    decoder_layers: int = 3
    memory_slots: int = 128
    max_len: int = 100
    dropout: float = 0.1


def _encoder(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm transformer encoder."""
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class LocalGlobalEncoder(nn.Module):
    """Tiles -> region tokens (region transformer + masked mean) -> slide transformer over regions."""

    def __init__(self, arch: ReportGenArch):
        super().__init__()
        self.region_size = arch.region_size
        self.proj = nn.Sequential(nn.Linear(arch.in_dim, arch.dim), nn.GELU(), nn.Dropout(arch.dropout))
        self.local = _encoder(arch.dim, arch.heads, arch.local_layers, arch.dropout)
        self.glob = _encoder(arch.dim, arch.heads, arch.global_layers, arch.dropout)
        self.norm = nn.LayerNorm(arch.dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D), mask (B, N) -> region tokens (B, R, dim) and their mask (B, R)."""
        b, n, _ = features.shape
        s = self.region_size
        pad = (-n) % s
        h = F.pad(self.proj(features), (0, 0, 0, pad))
        m = F.pad(mask, (0, pad), value=False)
        r = h.shape[1] // s
        h, m = h.reshape(b * r, s, -1), m.reshape(b * r, s)
        region_mask = m.any(1)
        safe = m.clone()
        safe[~region_mask, 0] = True  # an all-padding region attends to one slot; it is masked out below
        h = self.local(h, src_key_padding_mask=~safe)
        w = m.unsqueeze(-1).to(h.dtype)
        tokens = (h * w).sum(1) / w.sum(1).clamp(min=1)
        tokens, region_mask = tokens.reshape(b, r, -1), region_mask.reshape(b, r)
        return self.norm(self.glob(tokens, src_key_padding_mask=~region_mask)), region_mask


class CrossModalContext(nn.Module):
    """A learned memory bank shared by both modalities: x + attention(norm(x), bank) (HistGen's context)."""

    def __init__(self, dim: int, slots: int, heads: int, dropout: float):
        super().__init__()
        self.bank = nn.Parameter(torch.randn(slots, dim) * dim ** -0.5)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim)."""
        bank = self.bank.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        return x + self.attn(self.norm(x), bank, bank, need_weights=False)[0]


class ReportGenerator(nn.Module):
    """Hierarchical visual encoder + cross-modal context + transformer decoder over word ids."""

    def __init__(self, arch: ReportGenArch):
        super().__init__()
        self.arch = arch
        self.encoder = LocalGlobalEncoder(arch)
        self.context = CrossModalContext(arch.dim, arch.memory_slots, arch.heads, arch.dropout)
        self.embed = nn.Embedding(arch.vocab_size, arch.dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, arch.max_len + 2, arch.dim))
        layer = nn.TransformerDecoderLayer(arch.dim, arch.heads, 4 * arch.dim, arch.dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, arch.decoder_layers)
        self.norm = nn.LayerNorm(arch.dim)
        self.head = nn.Linear(arch.dim, arch.vocab_size, bias=False)
        self.head.weight = self.embed.weight

    def encode(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual memory (B, R, dim) with its mask, after the cross-modal context."""
        if features.ndim == 2:
            features = features.unsqueeze(0)
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        memory, mem_mask = self.encoder(features, mask)
        return self.context(memory), mem_mask

    def decode(self, memory: torch.Tensor, mem_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-word logits (B, T, V) for word ids (B, T) given the visual memory."""
        t = tokens.shape[1]
        if t > self.pos.shape[1]:
            raise ValueError(f"{t} tokens exceed max_len + 2 = {self.pos.shape[1]}")
        x = self.context(self.embed(tokens) + self.pos[:, :t])
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), 1)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_key_padding_mask=tokens == 0,
                         memory_key_padding_mask=~mem_mask, tgt_is_causal=True)
        return self.head(self.norm(h))

    def loss(self, features: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: cross-entropy of each next word (padding ignored)."""
        memory, mem_mask = self.encode(features, mask)
        logits = self.decode(memory, mem_mask, tokens[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=0)

    @torch.no_grad()
    def generate(self, features: torch.Tensor, mask: torch.Tensor | None = None, beam_size: int = 1,
                 max_len: int | None = None, length_penalty: float = 1.0) -> list[list[int]]:
        """Word ids per slide (without ``<bos>``/``<eos>``): greedy (``beam_size`` 1) or beam search,
        beams ranked by log-probability / length ** ``length_penalty``."""
        max_len = min(max_len or self.arch.max_len, self.arch.max_len + 1)
        memory, mem_mask = self.encode(features, mask)
        return [self._beam(memory[i:i + 1], mem_mask[i:i + 1], beam_size, max_len, length_penalty)
                for i in range(memory.shape[0])]

    def _beam(self, memory: torch.Tensor, mem_mask: torch.Tensor, k: int, max_len: int, alpha: float) -> list[int]:
        """Beam search for one slide (k = 1 is greedy)."""
        beams = [([1], 0.0)]
        done: list[tuple[list[int], float]] = []
        for _ in range(max_len):
            tokens = torch.tensor([b[0] for b in beams], device=memory.device)
            logp = F.log_softmax(self.decode(memory.expand(len(beams), -1, -1), mem_mask.expand(len(beams), -1),
                                             tokens)[:, -1].float(), dim=-1)
            logp[:, :2] = -math.inf  # never <pad> or <bos>
            cand = (torch.tensor([b[1] for b in beams], device=logp.device).unsqueeze(1) + logp).flatten()
            top = cand.topk(min(k, len(cand)))
            beams = []
            for score, idx in zip(top.values.tolist(), top.indices.tolist()):
                seq = list(tokens[idx // logp.shape[1]].tolist()) + [idx % logp.shape[1]]
                (done if seq[-1] == 2 else beams).append((seq, score))
            if not beams or len(done) >= k:
                break
        done += beams
        best = max(done, key=lambda b: b[1] / max(1, len(b[0]) - 1) ** alpha)[0]
        return [i for i in best[1:] if i != 2]


@dataclass
class ReportGenConfig:
    """``openmusk report train``: a HistGen-style generator on (slide features, report) pairs."""

    table: str = path_field()       # CSV: slide_id, features (HDF5 path, relative to the CSV), report[, split]
    output_dir: str = path_field("report_generator")
    dim: int = 256
    heads: int = 8
    region_size: int = 64           # tiles per region of the local encoder
    local_layers: int = 1
    global_layers: int = 1
    decoder_layers: int = 3
    memory_slots: int = 128         # cross-modal context memory bank
    max_len: int = 100              # words per report (longer ones are cut for training)
    min_word_count: int = 1         # rarer training words become <unk>
    max_tiles: int = 4096           # random tiles per slide per training step; 0 = all
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    val_fraction: float = 0.1       # without a split column: random validation and test slides
    test_fraction: float = 0.2
    beam_size: int = 3              # decoding of the test split
    meteor: bool = True             # METEOR needs Java (pycocoevalcap)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        """Sizes that would fail later fail now."""
        from openmusk.core.runtime import normalize_precision

        self.precision = normalize_precision(self.precision)
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if min(self.region_size, self.max_len, self.epochs, self.batch_size, self.beam_size) < 1:
            raise ValueError("region_size, max_len, epochs, batch_size and beam_size must be >= 1")


def read_report_table(path: str | os.PathLike, need_report: bool = True) -> "Any":
    """The pairs table with resolved feature paths; missing columns or files name the row."""
    import pandas as pd

    path = Path(path)
    table = pd.read_csv(path, dtype={"slide_id": str, "report": str, "split": str}, keep_default_na=False)
    need = ["slide_id", "features"] + (["report"] if need_report else [])
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    table["features"] = [str(f if Path(f).is_absolute() else path.parent / f) for f in table["features"]]
    for row, f in enumerate(table["features"]):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{path} row {row + 2} (slide {table['slide_id'][row]}): no features file {f}")
    return table


def _splits(table: Any, cfg: ReportGenConfig) -> dict[str, np.ndarray]:
    """Row indices of train/val/test: the ``split`` column, else a seeded random split."""
    if "split" in table.columns:
        bad = sorted(set(table["split"]) - {"train", "val", "test"})
        if bad:
            raise ValueError(f"{cfg.table}: split values must be train | val | test, found {bad}")
        return {s: np.flatnonzero(table["split"].to_numpy() == s) for s in ("train", "val", "test")}
    order = np.random.default_rng(cfg.seed).permutation(len(table))
    n_test, n_val = int(round(cfg.test_fraction * len(table))), int(round(cfg.val_fraction * len(table)))
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


def _bags(files: Sequence[str], rows: Sequence[int], max_tiles: int, rng: np.random.Generator | None,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (B, N, D) features and mask of the given rows (a random tile subset when ``rng`` is given)."""
    from openmusk.data.features_h5 import read_features

    arrays = []
    for i in rows:
        x = read_features(files[i])[0]
        if rng is not None and max_tiles and len(x) > max_tiles:
            x = x[np.sort(rng.choice(len(x), max_tiles, replace=False))]
        arrays.append(torch.from_numpy(np.asarray(x, np.float32)))
    n = max(len(a) for a in arrays)
    feats = torch.zeros(len(arrays), n, arrays[0].shape[1])
    mask = torch.zeros(len(arrays), n, dtype=torch.bool)
    for j, a in enumerate(arrays):
        feats[j, :len(a)], mask[j, :len(a)] = a, True
    return feats.to(device), mask.to(device)


def _tokens(vocab: Vocabulary, reports: Sequence[str], max_len: int, device: torch.device) -> torch.Tensor:
    """Padded (B, T) word ids."""
    ids = [vocab.encode(r, max_len) for r in reports]
    out = torch.zeros(len(ids), max(len(i) for i in ids), dtype=torch.long)
    for j, i in enumerate(ids):
        out[j, :len(i)] = torch.tensor(i)
    return out.to(device)


def _generate(model: ReportGenerator, vocab: Vocabulary, files: Sequence[str], rows: Sequence[int],
              beam_size: int, batch_size: int, device: torch.device, precision: str) -> list[str]:
    """Reports for the given rows."""
    from openmusk.core.runtime import autocast

    model.eval()
    out: list[str] = []
    for start in range(0, len(rows), batch_size):
        feats, mask = _bags(files, rows[start:start + batch_size], 0, None, device)
        with autocast(device, precision):
            out += [vocab.decode(ids + [2]) for ids in model.generate(feats, mask, beam_size)]
    return out


def _save(model: ReportGenerator, vocab: Vocabulary, out: Path) -> None:
    """Weights, vocabulary and architecture, each written atomically."""
    from safetensors.torch import save_file

    from openmusk.core.io import atomic_path, write_json

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != "head.weight"}
    with atomic_path(out / WEIGHTS, suffix=".safetensors.tmp") as tmp:
        save_file(state, str(tmp))
    write_json(out / VOCAB, vocab.words[4:])
    write_json(out / ARCH, asdict(model.arch))


def load_report_generator(model_dir: str | os.PathLike, device: str | torch.device = "cpu"
                          ) -> tuple[ReportGenerator, Vocabulary]:
    """A trained generator and its vocabulary from ``openmusk report train``'s output folder."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    for name in (WEIGHTS, VOCAB, ARCH):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir}: no {name}; is it the output_dir of `openmusk report train`?")
    model = ReportGenerator(ReportGenArch(**json.loads((model_dir / ARCH).read_text())))
    state = load_file(str(model_dir / WEIGHTS))
    state["head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), Vocabulary(json.loads((model_dir / VOCAB).read_text()))


def train_report_generator(cfg: ReportGenConfig, log: Callable[[str], None] = print) -> dict:
    """Train with teacher forcing, keep the epoch with the best validation BLEU-4 (greedy; the last epoch
    without validation slides), then decode the test split (beam) and score it. Writes to ``cfg.output_dir``: the model (:func:`load_report_generator`),
    ``history.json``, ``test_generated.csv`` and ``metrics.json``. Reruns resume from ``resume.pt``."""
    import pandas as pd

    from openmusk.core.io import atomic_path, write_json
    from openmusk.core.runtime import autocast, resolve_device, resolve_precision, seed_everything
    from openmusk.data.features_h5 import features_shape

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = read_report_table(cfg.table)
    split = _splits(table, cfg)
    if len(split["train"]) == 0:
        raise ValueError(f"{cfg.table}: no training slides")
    files, reports = table["features"].tolist(), table["report"].tolist()
    vocab = Vocabulary.build([reports[i] for i in split["train"]], cfg.min_word_count)
    arch = ReportGenArch(features_shape(files[0])[1], len(vocab), cfg.dim, cfg.heads, cfg.region_size,
                         cfg.local_layers, cfg.global_layers, cfg.decoder_layers, cfg.memory_slots, cfg.max_len,
                         cfg.dropout)
    model = ReportGenerator(arch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(split["train"]) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    write_json(out / "config.json", asdict(cfg))
    state = {"epoch": 0, "history": [], "best": -1.0}
    resume = out / "resume.pt"
    if resume.is_file():
        saved = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        state = {"epoch": saved["epoch"], "history": json.loads(saved["history"]), "best": saved["best"]}
        log(f"resumed after epoch {state['epoch']}")
    val = split["val"]
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        order = rng.permutation(split["train"])
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            feats, mask = _bags(files, rows, cfg.max_tiles, rng, device)
            with autocast(device, precision):
                loss = model.loss(feats, mask, _tokens(vocab, [reports[i] for i in rows], cfg.max_len, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(rows)
        rec = {"epoch": epoch, "train_loss": total / len(order)}
        if len(val):
            gen = _generate(model, vocab, files, val, 1, cfg.batch_size, device, precision)
            val_m = report_metrics([reports[i] for i in val], gen, meteor=False)
            rec.update(val_BLEU_4=val_m["BLEU_4"], val_ROUGE_L=val_m["ROUGE_L"])
        state["history"].append(rec)
        log(f"epoch {epoch:3d} loss {rec['train_loss']:.4f}" + (
            f" val BLEU-4 {rec['val_BLEU_4']:.4f} ROUGE-L {rec['val_ROUGE_L']:.4f}" if len(val) else ""))
        score = rec.get("val_BLEU_4", float(epoch))  # without validation slides the last epoch is kept
        if score > state["best"]:
            state["best"] = score
            _save(model, vocab, out)
        with atomic_path(resume, suffix=".pt.tmp") as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "epoch": epoch + 1, "history": json.dumps(state["history"]), "best": state["best"]}, tmp)
    write_json(out / "history.json", state["history"])
    model, vocab = load_report_generator(out, device)
    metrics: dict[str, Any] = {"n_train": len(split["train"]), "n_val": len(split["val"]),
                               "n_test": len(split["test"]), "vocab_size": len(vocab), "history": state["history"]}
    if len(split["test"]):
        test = split["test"]
        gen = _generate(model, vocab, files, test, cfg.beam_size, cfg.batch_size, device, precision)
        refs = [reports[i] for i in test]
        metrics["test"] = report_metrics(refs, gen, meteor=cfg.meteor)
        with atomic_path(out / "test_generated.csv", suffix=".csv.tmp") as tmp:
            pd.DataFrame({"slide_id": table["slide_id"].to_numpy()[test], "report": refs, "generated": gen}
                         ).to_csv(tmp, index=False)
    write_json(out / "metrics.json", metrics)
    return metrics


def generate_reports(model_dir: str | os.PathLike, table: str | os.PathLike, beam_size: int = 3,
                     batch_size: int = 4, device: str = "auto", precision: str = "auto") -> "Any":
    """A DataFrame ``slide_id, generated`` (and ``report`` when the table has it) for a features table."""
    import pandas as pd

    from openmusk.core.runtime import resolve_device, resolve_precision

    dev = resolve_device(device)
    model, vocab = load_report_generator(model_dir, dev)
    t = read_report_table(table, need_report=False)
    gen = _generate(model, vocab, t["features"].tolist(), list(range(len(t))), beam_size, batch_size, dev,
                    resolve_precision(precision, dev))
    out = pd.DataFrame({"slide_id": t["slide_id"], "generated": gen})
    if "report" in t.columns:
        out["report"] = t["report"]
    return out


def evaluate_reports(path: str | os.PathLike, reference_column: str = "report", generated_column: str = "generated",
                     meteor: bool = True) -> dict[str, float]:
    """Metrics of a CSV holding reference and generated reports (e.g. ``openmusk report generate`` output)."""
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in (reference_column, generated_column):
        if col not in table.columns:
            raise ValueError(f"{path}: missing column {col!r}; found {list(table.columns)}")
    return report_metrics(table[reference_column].tolist(), table[generated_column].tolist(), meteor=meteor)
