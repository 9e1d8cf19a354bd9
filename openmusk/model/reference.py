"""A literal, slow transliteration of the reference MUSK computation over a state dict.

Both experts run on every token and the right one is picked per token; attention is an explicit
softmax in float32. It shares no code with :mod:`openmusk.model.musk`, so the tests use it to
check what the parity fixture does not cover (fusion, masked patches, other image sizes) and the
model benchmark uses it as the naive baseline.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .config import MuskConfig

__all__ = ["reference_tokens"]


def _ln(sd: dict, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _lin(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].t() + sd[f"{name}.bias"]


def _multiway(fn, name: str, x: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """Run expert A and expert B on every token and keep A's output on image tokens."""
    return torch.where(is_image[..., None], fn(f"{name}.A", x), fn(f"{name}.B", x))


def reference_tokens(sd: dict[str, torch.Tensor], cfg: MuskConfig, images: Optional[torch.Tensor] = None,
                     input_ids: Optional[torch.Tensor] = None, padding_mask: Optional[torch.Tensor] = None,
                     vision_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Encoder output after the final LayerNorm for image, text or fusion input (B, T, D)."""
    eps, h = cfg.layer_norm_eps, cfg.num_heads
    seqs, modality, pads = [], [], []
    if images is not None:
        x = F.conv2d(images, sd["beit3.vision_embed.proj.weight"], sd["beit3.vision_embed.proj.bias"],
                     stride=cfg.patch_size).flatten(2).transpose(1, 2)
        if vision_mask is not None:
            w = vision_mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + sd["beit3.vision_embed.mask_token"] * w
        x = torch.cat([sd["beit3.vision_embed.cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
        pos = torch.arange(2, x.shape[1] + 2)
        seqs.append(x + sd["beit3.encoder.embed_positions.A.weight"][pos])
        modality.append(torch.ones(x.shape[:2], dtype=torch.bool))
        pads.append(torch.zeros(x.shape[:2]))
    if input_ids is not None:
        x = sd["beit3.text_embed.weight"][input_ids]
        pos = torch.arange(2, x.shape[1] + 2)
        seqs.append(x + sd["beit3.encoder.embed_positions.B.weight"][pos])
        modality.append(torch.zeros(x.shape[:2], dtype=torch.bool))
        pads.append(torch.zeros(x.shape[:2]) if padding_mask is None else padding_mask.float())
    x, is_img, pad = torch.cat(seqs, 1), torch.cat(modality, 1), torch.cat(pads, 1)
    x = x * (1 - pad.unsqueeze(-1))
    b, t, d = x.shape
    ln = lambda name, y: _ln(sd, name, y, eps)  # noqa: E731
    lin = lambda name, y: _lin(sd, name, y)  # noqa: E731
    for i in range(cfg.depth):
        p = f"beit3.encoder.layers.{i}"
        y = _multiway(ln, f"{p}.self_attn_layer_norm", x, is_img)
        q = _multiway(lin, f"{p}.self_attn.q_proj", y, is_img) * (d // h) ** -0.5
        k = _multiway(lin, f"{p}.self_attn.k_proj", y, is_img)
        v = _multiway(lin, f"{p}.self_attn.v_proj", y, is_img)
        split = lambda z: z.view(b, t, h, d // h).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2)
        scores = scores.masked_fill(pad.bool()[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        o = (attn @ split(v)).transpose(1, 2).reshape(b, t, d)
        o = _multiway(ln, f"{p}.self_attn.inner_attn_ln", o, is_img)
        x = x + _multiway(lin, f"{p}.self_attn.out_proj", o, is_img)
        y = _multiway(ln, f"{p}.final_layer_norm", x, is_img)

        def ffn(name: str, z: torch.Tensor) -> torch.Tensor:
            z = F.gelu(lin(f"{name}.fc1", z).float()).to(z.dtype)
            return lin(f"{name}.fc2", ln(f"{name}.ffn_layernorm", z))

        x = x + _multiway(ffn, f"{p}.ffn", y, is_img)
    return _multiway(ln, "beit3.encoder.layer_norm", x, is_img)

