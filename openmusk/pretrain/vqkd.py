"""VQ-KD visual tokenizer (BEiT v2): discrete patch tokens distilled from a frozen teacher.

A small ViT encodes each patch, an l2-normalised cosine codebook quantises it (EMA updates,
restart of dead codes), and a small ViT decoder reconstructs the teacher's patch features from the
codes under a cosine loss. After training, :meth:`VQKD.encode_ids` gives one token id per patch:
the targets of masked image modelling in stage 1. The teacher is any frozen encoder of the
registry (:func:`openmusk.encoders.load_encoder`) that gives per-patch tokens (``encode_patches``),
named as in :func:`resolve_teacher`, or a callable ``images -> (B, P, D)``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from openmusk.core.io import atomic_path
from openmusk.data.transforms import MUSK_MEAN, MUSK_STD, denormalize

__all__ = ["VQKDConfig", "VQKD_CONFIGS", "vqkd_config", "VQKD", "NormEMACodebook", "Teacher", "resolve_teacher", "teacher_from_encoder",
           "load_teacher_encoder", "codebook_stats", "save_tokenizer", "load_tokenizer", "VQKDObjective"]


@dataclass
class VQKDConfig:
    """Sizes of the tokenizer. The defaults are a SMALL tokenizer (256 wide, 4 encoder layers, a
    1-layer decoder, codebook 8192 x 32) for modest corpora; the authors' size is the named config
    ``vqkd_base_decoder_3x768x12`` (:func:`vqkd_config`)."""

    img_size: int = 384
    patch_size: int = 16
    embed_dim: int = 256
    depth: int = 4
    num_heads: int = 4
    decoder_depth: int = 1
    codebook_size: int = 8192
    codebook_dim: int = 32
    teacher_dim: int = 1024
    decay: float = 0.99
    commitment: float = 1.0
    restart_after: int = 100       # a code unused for this many steps restarts on an encoder output

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size


# Named sizes. The authors' stage 1 used ``vqkd_encoder_base_decoder_3x768x12_ctrans``
# (1_mask_pretrain/configs/pretrain_musk_large.yaml, modeling_vqkd.py): a ViT-B/16 encoder
# (12 layers, 768 wide, 12 heads), a 3-layer 768-wide decoder, codebook 8192 x 32, 384 px, with
# CTransPath as teacher (any registry encoder teaches here: ``teacher`` of the tokenizer stage).
VQKD_CONFIGS: dict[str, VQKDConfig] = {
    "vqkd_small": VQKDConfig(),
    "vqkd_base_decoder_3x768x12": VQKDConfig(embed_dim=768, depth=12, num_heads=12, decoder_depth=3,
                                             codebook_size=8192, codebook_dim=32, teacher_dim=768),
}


def vqkd_config(name: str, **overrides: Any) -> VQKDConfig:
    """A named tokenizer size (:data:`VQKD_CONFIGS`), fields overridden (e.g. ``teacher_dim``)."""
    if name not in VQKD_CONFIGS:
        raise ValueError(f"unknown tokenizer config {name!r}; known: {', '.join(VQKD_CONFIGS)}")
    from dataclasses import replace
    return replace(VQKD_CONFIGS[name], **overrides)


def _vit_blocks(dim: int, heads: int, depth: int) -> nn.TransformerEncoder:
    """Pre-LN transformer blocks (GELU MLP of 4x width)."""
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class NormEMACodebook(nn.Module):
    """Cosine codebook: l2-normalised codes updated by EMA of assigned vectors; dead codes restarted."""

    def __init__(self, size: int, dim: int, decay: float = 0.99, restart_after: int = 100):
        super().__init__()
        self.size, self.decay, self.restart_after = size, decay, restart_after
        self.register_buffer("embed", F.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_sum", torch.zeros(size, dim))
        self.register_buffer("unused_steps", torch.zeros(size, dtype=torch.long))
        self.register_buffer("initted", torch.tensor(False))

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code (cosine) of each l2-normalised row of ``z``."""
        return (z @ self.embed.t()).argmax(-1)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """EMA of counts and sums (summed over ranks), code renormalisation, dead-code restart."""
        counts = torch.bincount(ids, minlength=self.size).to(z.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, z)
        gathered = z
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
            parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, z.contiguous())
            gathered = torch.cat(parts)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        fresh = F.normalize(self.embed_sum, dim=-1)
        self.embed.copy_(torch.where((counts > 0)[:, None], fresh, self.embed))
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_steps >= self.restart_after
        n_dead = int(dead.sum())
        if n_dead:
            # the same choice on every rank: a generator seeded by the (identical) update count
            g = torch.Generator().manual_seed(int(self.unused_steps.sum()))
            pick = torch.randint(len(gathered), (n_dead,), generator=g).to(z.device)
            self.embed[dead] = gathered[pick]
            self.embed_sum[dead] = gathered[pick]
            self.cluster_size[dead] = 1.0
            self.unused_steps[dead] = 0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise l2-normalised ``z`` (N, d): (codes with straight-through gradient, ids)."""
        z = z.float()
        if self.training and not bool(self.initted):
            with torch.no_grad():
                src = z
                if dist.is_available() and dist.is_initialized():
                    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
                    dist.all_gather(parts, z.contiguous())
                    src = torch.cat(parts)
                g = torch.Generator().manual_seed(0)
                idx = torch.randint(len(src), (self.size,), generator=g).to(z.device)
                self.embed.copy_(src[idx] + 0.01 * F.normalize(torch.randn(self.size, z.shape[1], generator=g), dim=-1).to(z.device))
                self.embed.copy_(F.normalize(self.embed, dim=-1))
                self.embed_sum.copy_(self.embed)
                self.cluster_size.fill_(1.0)
                self.initted.fill_(True)
        ids = self.assign(z)
        q = self.embed[ids]
        if self.training:
            self._update(z.detach(), ids)
        return z + (q - z).detach(), ids


def codebook_stats(ids: torch.Tensor, size: int) -> dict[str, float]:
    """Perplexity (exp entropy of code frequencies) and the fraction of codes used by ``ids``."""
    counts = torch.bincount(ids.flatten(), minlength=size).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"perplexity": float(torch.exp(-(nz * nz.log()).sum())),
            "usage": float((counts > 0).double().mean())}


class VQKD(nn.Module):
    """The tokenizer: ViT encoder -> cosine codebook -> ViT decoder predicting teacher features."""

    def __init__(self, cfg: VQKDConfig):
        super().__init__()
        self.config = cfg
        n = cfg.grid ** 2
        self.patch_embed = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, n, cfg.embed_dim) * 0.02)
        self.encoder = _vit_blocks(cfg.embed_dim, cfg.num_heads, cfg.depth)
        self.encoder_norm = nn.LayerNorm(cfg.embed_dim)
        self.to_code = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.Tanh(),
                                     nn.Linear(cfg.embed_dim, cfg.codebook_dim))
        self.codebook = NormEMACodebook(cfg.codebook_size, cfg.codebook_dim, cfg.decay,
                                        cfg.restart_after)
        self.from_code = nn.Linear(cfg.codebook_dim, cfg.embed_dim)
        self.dec_pos_embed = nn.Parameter(torch.randn(1, n, cfg.embed_dim) * 0.02)
        self.decoder = _vit_blocks(cfg.embed_dim, cfg.num_heads, cfg.decoder_depth)
        self.decoder_norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.Tanh(),
                                  nn.Linear(cfg.embed_dim, cfg.teacher_dim))

    def _check(self, images: torch.Tensor) -> None:
        s = self.config.img_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"tokenizer images must be (B, 3, {s}, {s}), got {tuple(images.shape)}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """l2-normalised code-space vectors (B, P, codebook_dim) before quantisation."""
        self._check(images)
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.encoder_norm(self.encoder(x))
        return F.normalize(self.to_code(x).float(), dim=-1)

    @torch.no_grad()
    def encode_ids(self, images: torch.Tensor) -> torch.Tensor:
        """Discrete visual token ids (B, P), patches in raster order."""
        z = self.encode(images)
        return self.codebook.assign(z.flatten(0, 1)).view(z.shape[:2])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(predicted teacher features (B, P, teacher_dim), ids (B, P), commitment loss)."""
        z = self.encode(images)
        q, ids = self.codebook(z.flatten(0, 1))
        q = q.view_as(z)
        commit = F.mse_loss(z, q.detach())
        x = self.from_code(q) + self.dec_pos_embed
        pred = self.head(self.decoder_norm(self.decoder(x)))
        return pred, ids.view(z.shape[:2]), commit


class Teacher:
    """A frozen encoder seen as ``images (MUSK-normalised) -> patch features (B, grid*grid, D)``.

    Images are resized to the teacher's ``img_size`` and moved from MUSK's normalisation to the
    teacher's ``mean``/``std``; its token grid is resized to ``grid`` when the sizes differ.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], grid: int,
                 img_size: int | None = None, mean: tuple = MUSK_MEAN, std: tuple = MUSK_STD):
        self.fn, self.grid, self.img_size = fn, grid, img_size
        self.same_normalization = tuple(mean) == MUSK_MEAN and tuple(std) == MUSK_STD
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.img_size and x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False)
        if not self.same_normalization:
            x = (denormalize(x) - self.mean.to(x.device)) / self.std.to(x.device)
        feats = self.fn(x).float()
        b, n, d = feats.shape
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(f"teacher returned {n} patch tokens, not a square grid")
        if side != self.grid:
            f = feats.transpose(1, 2).reshape(b, d, side, side)
            f = F.interpolate(f, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            feats = f.flatten(2).transpose(1, 2)
        return feats


def _input_convention(transform: Callable) -> tuple[int, tuple, tuple]:
    """(side, mean, std) of an encoder's input, measured through its own transform: a black and a
    white image become ``-mean/std`` and ``(1 - mean)/std`` per channel."""
    from PIL import Image

    black, white = (transform(Image.new("RGB", (512, 512), (v, v, v))).float() for v in (0, 255))
    if black.ndim != 3 or black.shape[0] != 3:
        raise ValueError(f"teacher transform gives shape {tuple(black.shape)}, expected (3, S, S)")
    b, w = black[:, 0, 0].double(), white[:, 0, 0].double()
    std = 1.0 / (w - b)
    return int(black.shape[-1]), tuple((-b * std).tolist()), tuple(std.tolist())


def teacher_from_encoder(encoder: Any, grid: int) -> Teacher:
    """A :class:`Teacher` from a registry encoder with ``encode_patches`` (frozen, in eval mode);
    its input size and normalisation are read from its transform."""
    if not callable(getattr(encoder, "encode_patches", None)):
        raise ValueError(f"encoder {getattr(encoder, 'name', encoder)!r} gives no per-patch tokens "
                         "(encode_patches), so it cannot teach the VQ-KD tokenizer")
    model = getattr(encoder, "model", None)
    if isinstance(model, nn.Module):
        model.eval().requires_grad_(False)
    img_size, mean, std = _input_convention(encoder.transform)
    return Teacher(encoder.encode_patches, grid, img_size, mean, std)


def load_teacher_encoder(teacher: str, pretrained: str | None = None, device: Any = None,
                         precision: str | None = None, **kwargs: Any) -> Any:
    """The teacher encoder named by a tokenizer config.

    ``musk:<config>`` is MUSK of that config with ``pretrained`` weights (None: random init),
    ``timm:<model>`` a timm model with its pretrained weights; any other name goes to
    :func:`openmusk.encoders.load_encoder` with ``kwargs`` (``pretrained`` is the ``weights``
    of the MUSK encoders ``musk`` and ``musk_singlescale``).
    """
    from openmusk.encoders import load_encoder

    kind, sep, rest = teacher.partition(":")
    if sep and kind == "musk":
        return load_encoder("musk", weights=pretrained or "random", arch=rest or None, device=device,
                            precision=precision, **kwargs)
    if sep and kind == "timm":
        return load_encoder("timm", model=rest, weights=True, device=device, precision=precision, **kwargs)
    if teacher in ("musk", "musk_singlescale"):
        kwargs.setdefault("weights", pretrained or "random")
    return load_encoder(teacher, device=device, precision=precision, **kwargs)


def resolve_teacher(teacher: str | Callable | Any, grid: int, pretrained: str | None = None,
                    device: str | torch.device | None = None, precision: str | None = None,
                    **kwargs: Any) -> Teacher:
    """A frozen :class:`Teacher` from an encoder name (see :func:`load_teacher_encoder`), an encoder
    object with ``encode_patches``, or a callable ``MUSK-normalised images -> (B, P, D)``."""
    if isinstance(teacher, str):
        teacher = load_teacher_encoder(teacher, pretrained, device, precision, **kwargs)
    if hasattr(teacher, "encode_image"):  # an encoder: it must give per-patch tokens
        return teacher_from_encoder(teacher, grid)
    if callable(teacher):
        return Teacher(teacher, grid)
    raise TypeError(f"teacher must be an encoder name, an encoder or a callable, got {type(teacher).__name__}")


class VQKDObjective(nn.Module):
    """Training objective of the tokenizer: 1 - cos(decoded, teacher) + commitment loss."""

    def __init__(self, tokenizer: VQKD, teacher: Teacher):
        super().__init__()
        self.tokenizer = tokenizer
        object.__setattr__(self, "teacher", teacher)  # frozen, not part of the saved state

    def forward(self, image: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        target = self.teacher(image)
        if target.shape[-1] != self.tokenizer.config.teacher_dim:
            raise ValueError(f"teacher features are {target.shape[-1]}-d but the tokenizer's "
                             f"teacher_dim is {self.tokenizer.config.teacher_dim}")
        pred, ids, commit = self.tokenizer(image)
        rec = 1 - F.cosine_similarity(pred.float(), target, dim=-1).mean()
        stats = codebook_stats(ids, self.tokenizer.config.codebook_size)
        return {"loss": rec + self.tokenizer.config.commitment * commit, "rec_loss": rec.detach(),
                "commit_loss": commit.detach(), "perplexity": torch.tensor(stats["perplexity"]),
                "usage": torch.tensor(stats["usage"])}


def save_tokenizer(tokenizer: VQKD, path: str | os.PathLike) -> Path:
    """Write the tokenizer as safetensors with its config in the metadata (atomically)."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in tokenizer.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"vqkd_config": json.dumps(asdict(tokenizer.config))})
    return Path(path)


def load_tokenizer(path: str | os.PathLike) -> VQKD:
    """Load a tokenizer written by :func:`save_tokenizer` (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "vqkd_config" not in meta:
        raise ValueError(f"{path}: not a VQ-KD tokenizer file (no vqkd_config metadata)")
    tok = VQKD(VQKDConfig(**json.loads(meta["vqkd_config"])))
    tok.load_state_dict(load_file(str(path)))
    return tok.eval()
