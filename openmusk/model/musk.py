"""The MUSK model: BEiT-3 multiway encoder with retrieval heads, as the released checkpoint computes.

``Musk`` keeps the released module tree (``beit3.encoder.layers.N...``, ``vision_head``,
``language_head``, ``logit_scale``) and adds a fast, open_clip-like API: ``encode_image``,
``encode_text``, token outputs, fusion sequences for VQA, masked patches for MIM, and the authors'
``forward`` signature so their notebooks run unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MuskConfig
from .layers import EncoderLayer, Multiway, Packing, init_weights

__all__ = ["Musk", "interpolate_positions"]

POSITION_OFFSET = 2  # rows 0 and 1 of each position table are reserved (fairseq convention)
PAD_ID = 1  # <pad> in the tokenizer's XLM-R id convention: the padding a missing padding_mask marks
LOGIT_SCALE_INIT = math.log(1 / 0.07)


def interpolate_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a vision position table (2 reserved + CLS + g*g patch rows) to ``grid`` x ``grid``.

    Bicubic in float32 with align_corners=False over the patch rows laid out as a square; the first
    three rows are kept as they are (the reference's rule for loading at another image size).
    """
    keep, patches = table[: POSITION_OFFSET + 1], table[POSITION_OFFSET + 1:]
    old = math.isqrt(patches.shape[0])
    if old * old != patches.shape[0]:
        raise ValueError(f"vision position table has {patches.shape[0]} patch rows, not a square grid")
    if old == grid:
        return table
    d = table.shape[1]
    img = patches.float().reshape(1, old, old, d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = img.permute(0, 2, 3, 1).reshape(grid * grid, d).to(table.dtype)
    return torch.cat([keep, patches], dim=0)


def _text_inputs(input_ids, padding_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and padding mask from ``(ids, mask)`` or ids alone (padding where the id is ``<pad>``)."""
    if isinstance(input_ids, tuple) and len(input_ids) == 2 and padding_mask is None:
        input_ids, padding_mask = input_ids
    if padding_mask is None:
        padding_mask = (input_ids == PAD_ID).to(torch.long)
    return input_ids, padding_mask


class VisionEmbedding(nn.Module):
    """Conv patchify, optional mask-token replacement, CLS prepended.

    ``num_patches``, ``patch_shape`` and ``num_position_embeddings()`` are the attributes the
    authors' ``utils.load_model_and_may_interpolate`` (used by TRIDENT) reads to resize positions.
    """

    def __init__(self, cfg: MuskConfig):
        super().__init__()
        self.num_patches = cfg.num_patches
        self.patch_shape = (cfg.grid_size, cfg.grid_size)
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

    def forward(self, images: torch.Tensor, vision_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        if vision_mask is not None:
            if vision_mask.shape != x.shape[:2]:
                raise ValueError(f"vision_mask has shape {tuple(vision_mask.shape)}, expected "
                                 f"(batch, patches) = {tuple(x.shape[:2])}")
            x = torch.where(vision_mask.bool().unsqueeze(-1), self.mask_token.to(x.dtype), x)
        return torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)

    def num_position_embeddings(self) -> int:
        """Positions an image takes at the configured size: the patches and the CLS."""
        return self.num_patches + 1


class MultiwayEncoder(nn.Module):
    """Position tables per modality, the layer stack and the final multiway LayerNorm (``beit3.encoder``)."""

    def __init__(self, cfg: MuskConfig):
        super().__init__()
        self.embed_positions = nn.Module()
        self.embed_positions.A = nn.Embedding(cfg.num_patches + 1 + POSITION_OFFSET, cfg.embed_dim)
        self.embed_positions.B = nn.Embedding(cfg.max_text_positions, cfg.embed_dim)
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.embed_dim, cfg.num_heads, cfg.ffn_dim, cfg.layer_norm_eps, r) for r in rates)
        self.layer_norm = Multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, split: int, key_mask: Optional[torch.Tensor] = None,
                packing: Optional[Packing] = None) -> torch.Tensor:
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, split, key_mask, packing, use_reentrant=False)
            else:
                x = layer(x, split, key_mask, packing)
        return self.layer_norm(x, split)


class BEiT3(nn.Module):
    """The multiway backbone: text and vision embeddings plus the encoder."""

    def __init__(self, cfg: MuskConfig):
        super().__init__()
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.vision_embed = VisionEmbedding(cfg)
        self.encoder = MultiwayEncoder(cfg)


class Musk(nn.Module):
    """MUSK: a multiway transformer over image patches and text, with CLIP-style heads."""

    def __init__(self, config: MuskConfig):
        super().__init__()
        self.config = config
        self.beit3 = BEiT3(config)
        self.vision_head = nn.Linear(config.embed_dim, config.embed_dim, bias=False)
        self.language_head = nn.Linear(config.embed_dim, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh weights for training from scratch (BEiT-3 initialisation)."""
        init_weights(self.beit3, self.config.depth)
        for t in (self.beit3.vision_embed.cls_token, self.beit3.vision_embed.mask_token):
            nn.init.trunc_normal_(t, std=0.02)
        for head in (self.vision_head, self.language_head):
            nn.init.trunc_normal_(head.weight, std=0.02)
        with torch.no_grad():
            self.logit_scale.fill_(LOGIT_SCALE_INIT)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass to save memory."""
        self.beit3.encoder.grad_checkpointing = enable

    # ---------------------------------------------------------------- embeddings
    def _embed_image(self, images: torch.Tensor, vision_mask: Optional[torch.Tensor]) -> torch.Tensor:
        images = images.to(self.beit3.vision_embed.proj.weight.dtype)
        x = self.beit3.vision_embed(images, vision_mask)
        table = self.beit3.encoder.embed_positions.A.weight
        if x.shape[1] + POSITION_OFFSET != table.shape[0]:
            grid = math.isqrt(x.shape[1] - 1)
            if grid * grid != x.shape[1] - 1:
                raise ValueError(f"images of shape {tuple(images.shape)} do not give a square patch grid")
            table = interpolate_positions(table, grid)
        return x + table[POSITION_OFFSET: POSITION_OFFSET + x.shape[1]]

    def _embed_text(self, input_ids: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        n = input_ids.shape[1]
        table = self.beit3.encoder.embed_positions.B.weight
        if n + POSITION_OFFSET > table.shape[0]:
            raise ValueError(f"text of {n} tokens exceeds the {table.shape[0] - POSITION_OFFSET} text positions")
        x = self.beit3.text_embed(input_ids) + table[POSITION_OFFSET: POSITION_OFFSET + n]
        if padding_mask is not None:
            x = x * (1 - padding_mask.unsqueeze(-1).to(x.dtype))
        return x

    @staticmethod
    def _key_mask(padding_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(B, T) padding (1 = pad) -> SDPA boolean mask (B, 1, 1, T), True = attend; None if no pads."""
        if padding_mask is None or not bool(padding_mask.any()):
            return None
        return (padding_mask == 0)[:, None, None, :]

    # ---------------------------------------------------------------- token outputs
    def forward_tokens(self, images: Optional[torch.Tensor] = None, input_ids: Optional[torch.Tensor] = None,
                       padding_mask: Optional[torch.Tensor] = None,
                       vision_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder output after the final LayerNorm, (B, T, D), every position as the reference computes it.

        Images alone: CLS then patches (expert A). Text alone: all text positions (expert B),
        padded ones included. Both: one fusion sequence [image tokens ; text tokens] in which the
        two attend to each other, as VQA needs. ``vision_mask`` (B, P) bool puts ``mask_token``
        in place of the marked patches (masked image modelling).
        """
        if images is None and input_ids is None:
            raise ValueError("forward_tokens needs images, input_ids or both")
        parts, pads, split = [], [], 0
        if images is not None:
            parts.append(self._embed_image(images, vision_mask))
            split = parts[0].shape[1]
            pads.append(torch.zeros(parts[0].shape[:2], dtype=torch.bool, device=parts[0].device))
        if input_ids is not None:
            input_ids, padding_mask = _text_inputs(input_ids, padding_mask)
            if padding_mask.shape != input_ids.shape:
                raise ValueError(f"padding_mask {tuple(padding_mask.shape)} does not match input_ids "
                                 f"{tuple(input_ids.shape)}")
            parts.append(self._embed_text(input_ids, padding_mask))
            pads.append(padding_mask.bool())
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        key_mask = self._key_mask(pads[0] if len(pads) == 1 else torch.cat(pads, dim=1))
        return self.beit3.encoder(x, split if images is not None else 0, key_mask)

    def encode_image_tokens(self, images: torch.Tensor, vision_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All image tokens (B, P+1, D) after the final LayerNorm, CLS first (MIL, heatmaps, dense tasks)."""
        return self.forward_tokens(images=images, vision_mask=vision_mask)

    def encode_text_tokens(self, input_ids: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All text tokens (B, T, D) after the final LayerNorm, padded positions included."""
        return self.forward_tokens(input_ids=input_ids, padding_mask=padding_mask)

    # ---------------------------------------------------------------- embeddings for retrieval
    def _finish(self, cls: torch.Tensor, head: Optional[nn.Linear], normalize: bool) -> torch.Tensor:
        if head is not None:
            cls = head(cls)
        return F.normalize(cls, dim=-1) if normalize else cls

    def encode_image(self, images: torch.Tensor, *, head: bool = True, normalize: bool = True,
                     multiscale: bool = False, vision_mask: Optional[torch.Tensor] = None,
                     max_split_size: Optional[int] = None) -> torch.Tensor:
        """Image embedding: the CLS (B, D), through ``vision_head`` and L2-normalised by default.

        ``multiscale=True`` without the head gives the (B, 2D) features used for linear probes and
        MIL: CLS at scale 1 concatenated with the mean CLS of the crops at scale 2 (all crops of
        the batch run in one pass). With the head on, the reference keeps the scale-1 CLS only, so
        the result equals the single-scale head output, and scale 2 is not computed.
        """
        if multiscale and not head:
            if vision_mask is not None:
                raise ValueError("vision_mask applies to single-scale encoding only")
            feats = self.multiscale_features(images, max_split_size=max_split_size)
            return F.normalize(feats, dim=-1) if normalize else feats
        cls = self.encode_image_tokens(images, vision_mask)[:, 0]
        return self._finish(cls, self.vision_head if head else None, normalize)

    def multiscale_features(self, images: torch.Tensor, scales: tuple[int, int] = (1, 2),
                            max_split_size: Optional[int] = None) -> torch.Tensor:
        """Raw multiscale CLS features (B, 2D): scale-1 CLS, then the mean CLS over scale-2 crops."""
        b, _, h, w = images.shape
        if h != w:
            raise ValueError(f"multiscale features need square images, got {h}x{w}")
        split = max_split_size or h
        batches = []
        for s in scales:
            size = int(h * s)
            x = images if size == h else F.interpolate(
                images.float(), size=(size, size), mode="bicubic", align_corners=False).to(images.dtype)
            n = math.ceil(size / split)
            c = size // n
            crops = [x[:, :, i * c:(i + 1) * c, j * c:(j + 1) * c] for i in range(n) for j in range(n)]
            batches.append(torch.cat(crops, dim=0))
        sizes = {t.shape[-1] for t in batches}
        if len(sizes) == 1:  # every crop of every scale, in passes of the caller's batch size
            # (5 passes of B measured 8% faster than one pass of 5B on CPU, and 5x less activation memory)
            counts = [t.shape[0] // b for t in batches]
            views = torch.cat(batches, dim=0)
            cls = torch.cat([self.encode_image_tokens(v)[:, 0] for v in views.split(b)], dim=0)
            chunks = cls.split([k * b for k in counts], dim=0)
        else:
            chunks = [self.encode_image_tokens(t)[:, 0] for t in batches]
        per_scale = [c.reshape(-1, b, c.shape[-1]).mean(0) for c in chunks]
        return torch.cat(per_scale[:2], dim=-1)

    def encode_text(self, input_ids: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, *,
                    head: bool = True, normalize: bool = True) -> torch.Tensor:
        """Text embedding from the CLS (``<s>``) token, through ``language_head`` and normalised by default.

        Padded positions are never computed: the real tokens of the batch are packed into one
        row for every per-token operation and unpacked only for attention. No real token attends
        to padding, so the result equals the full-length computation. ``input_ids`` may be the
        tokenizer's ``(input_ids, padding_mask)`` output as it is (open_clip's habit); without a
        ``padding_mask`` the ``<pad>`` ids mark the padding.
        """
        input_ids, padding_mask = _text_inputs(input_ids, padding_mask)
        b, n = input_ids.shape
        keep = padding_mask == 0
        if not bool(keep[:, 0].all()):
            raise ValueError("encode_text: every text must start with a real token (<s>), got padding first")
        x = self._embed_text(input_ids, padding_mask)
        index = keep.reshape(-1).nonzero().squeeze(1)
        packing = Packing(index, b, n, keep[:, None, None, :])
        packed = x.reshape(b * n, -1).index_select(0, index).unsqueeze(0)
        out = self.beit3.encoder(packed, 0, None, packing)[0]
        lengths = keep.sum(1)
        first = lengths.cumsum(0) - lengths  # packed offset of each row's first real token
        return self._finish(out.index_select(0, first), self.language_head if head else None, normalize)

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """CLIP-style logits (images x texts): ``logit_scale.exp() * cos``, the training convention.

        The authors' demo notebook uses the stored (log-space) value directly; rankings agree,
        probabilities differ.
        """
        return self.logit_scale.exp() * image_emb @ text_emb.t()

    # ---------------------------------------------------------------- reference-compatible forward
    def forward(self, image: Optional[torch.Tensor] = None, text_description: Optional[torch.Tensor] = None,
                padding_mask: Optional[torch.Tensor] = None, return_global: bool = True,
                with_head: bool = True, out_norm: bool = True, ms_aug: bool = False,
                max_split_size: Optional[int] = None):
        """The authors' ``MUSK.forward``: returns ``(vision_cls, language_cls)``, None for a missing input."""
        vision = language = None
        if image is not None:
            if ms_aug:
                vision = self.multiscale_features(image, max_split_size=max_split_size)
                if with_head:
                    vision = self.vision_head(vision[:, : self.config.embed_dim])
            else:
                tokens = self.encode_image_tokens(image)
                vision = tokens[:, 0] if return_global else tokens
                if with_head:
                    vision = self.vision_head(vision)
        if text_description is not None:
            if return_global:
                language = self.encode_text(text_description, padding_mask, head=with_head, normalize=False)
            else:
                language = self.encode_text_tokens(text_description, padding_mask)
                if with_head:
                    language = self.language_head(language)
        if out_norm:
            vision = None if vision is None else F.normalize(vision, dim=-1)
            language = None if language is None else F.normalize(language, dim=-1)
        return vision, language
