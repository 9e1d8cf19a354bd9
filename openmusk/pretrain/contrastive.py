"""Stage 2, contrastive alignment: CLIP loss on the head embeddings plus an auxiliary MLM decoder.

Image and text embeddings (``vision_head`` / ``language_head`` on the CLS tokens, l2-normalised)
are gathered across ranks with their gradient, so every rank's pairs are negatives for every
other rank. The learnable ``logit_scale`` (log space) is clamped to ln(100) after each step, as
CLIP does. A light cross-attention decoder (masked text as queries, image tokens as keys and
values) predicts the 30% masked text tokens; it is dropped on export.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from openmusk.core.dist import all_gather_with_grad, rank
from openmusk.pretrain.masked import MLMHead, masked_token_loss

__all__ = ["clip_loss", "CrossAttentionDecoder", "ContrastiveAlignment", "MAX_LOGIT_SCALE"]

MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of this rank's pairs against all ranks' pairs; (loss, image->text accuracy).

    ``img``/``txt`` are this rank's normalised embeddings (B, D); ``logit_scale`` is in log space.
    """
    all_img, all_txt = all_gather_with_grad(img), all_gather_with_grad(txt)
    scale = logit_scale.exp()
    labels = torch.arange(img.shape[0], device=img.device) + rank() * img.shape[0]
    logits_i = scale * img.float() @ all_txt.float().t()
    logits_t = scale * txt.float() @ all_img.float().t()
    loss = 0.5 * (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels))
    acc = (logits_i.argmax(-1) == labels).float().mean()
    return loss, acc


class _DecoderLayer(nn.Module):
    """Pre-LN cross-attention (queries from text, keys/values from image) then a GELU MLP."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        k = self.norm_kv(kv)
        x = x + self.attn(self.norm_q(x), k, k, need_weights=False)[0]
        return x + self.ffn(self.norm_ffn(x))


class CrossAttentionDecoder(nn.Module):
    """The auxiliary decoder: a few cross-attention layers from text tokens to image tokens."""

    def __init__(self, dim: int, heads: int, depth: int = 2, eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(_DecoderLayer(dim, heads, eps) for _ in range(depth))

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = text_tokens
        for layer in self.layers:
            x = layer(x, image_tokens)
        return x


class ContrastiveAlignment(nn.Module):
    """MUSK + auxiliary decoder: ``forward`` on an image-text batch returns CLIP and MLM losses."""

    def __init__(self, model: nn.Module, decoder_depth: int = 2, mlm_weight: float = 1.0):
        super().__init__()
        cfg = model.config
        self.model, self.mlm_weight = model, mlm_weight
        self.decoder = CrossAttentionDecoder(cfg.embed_dim, cfg.num_heads, decoder_depth, cfg.layer_norm_eps)
        self.mlm_head = MLMHead(cfg.embed_dim, model.beit3.text_embed, cfg.layer_norm_eps)
        model.beit3.vision_embed.mask_token.requires_grad_(False)  # no masked patches in stage 2

    def after_step(self) -> None:
        """Clamp the logit scale to [0, ln 100] after every optimiser step (CLIP)."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor,
                masked_ids: torch.Tensor | None = None, mlm_labels: torch.Tensor | None = None,
                **_) -> dict[str, torch.Tensor]:
        m = self.model
        img_tokens = m.encode_image_tokens(image)
        img = F.normalize(m.vision_head(img_tokens[:, 0]), dim=-1)
        txt = F.normalize(m.language_head(m.encode_text_tokens(input_ids, padding_mask)[:, 0]), dim=-1)
        loss_clip, acc = clip_loss(img, txt, m.logit_scale)
        out = {"clip_loss": loss_clip.detach(), "clip_acc": acc.detach(),
               "logit_scale": m.logit_scale.detach().exp()}
        loss = loss_clip
        if self.mlm_weight > 0 and masked_ids is not None:
            q = m.encode_text_tokens(masked_ids, padding_mask)
            h = self.decoder(q, img_tokens)
            sel = mlm_labels != -100
            mlm_loss, mlm_acc = masked_token_loss(self.mlm_head(h[sel]), mlm_labels[sel])
            loss = loss + self.mlm_weight * mlm_loss
            out.update(mlm_loss=mlm_loss.detach(), mlm_acc=mlm_acc)
        out["loss"] = loss
        return out
