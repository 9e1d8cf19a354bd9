"""Stage 2, contrastive alignment: CLIP loss on the head embeddings plus an auxiliary MLM decoder.

As the authors' ``2_contrastive_pretrain`` computes it (``modeling_finetune.py``, ``mask_decoder.py``,
``RetrievalMaskDecoderHandler``): one image pass and one text pass of the MUSK encoder. Image and
text embeddings (``vision_head`` / ``language_head`` on the CLS tokens, l2-normalised) are gathered
across ranks with their gradient, so every rank's pairs are negatives for every other rank; the
learnable ``logit_scale`` (log space, init ln(1/0.07)) is used as ``exp`` and never clamped (CLIP's
clamp to ln 100 is an option). The text pass reads the MASKED caption, and the same pass is both
the CLIP text embedding and the decoder's queries (``clip_text="clean"`` encodes the clean caption
for CLIP instead, a second pass). The decoder (4 blocks, 16 heads) cross-attends from every text
token to the image's patch tokens (CLS excluded) and predicts, with a linear head with bias, the
original id at each ``<mask>``; loss = CLIP + 0.1 x MLM. The decoder is dropped on export.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from openmusk.core.dist import all_gather_with_grad, rank
from openmusk.pretrain.masked import masked_token_loss

__all__ = ["clip_loss", "CrossAttention", "DecoderBlock", "CrossAttentionDecoder", "ContrastiveAlignment",
           "CLIP_MAX_LOGIT_SCALE"]

CLIP_MAX_LOGIT_SCALE = math.log(100.0)   # CLIP's clamp; the authors' stage 2 has none


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


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context``: separate q and kv projections
    without bias, an output projection with bias, scale head_dim^-0.5 (``mask_decoder.Attention``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        k, v = self.to_kv(context).reshape(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        q = self.to_q(x).reshape(b, n, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DecoderBlock(nn.Module):
    """Pre-LN cross-attention (text queries, image context) then a GELU MLP of 4x width."""

    def __init__(self, dim: int, heads: int, eps: float = 1e-5):
        super().__init__()
        self.norm1, self.norm_context = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class CrossAttentionDecoder(nn.Module):
    """The auxiliary decoder: ``depth`` cross-attention blocks from text tokens to image patch tokens."""

    def __init__(self, dim: int, heads: int = 16, depth: int = 4, eps: float = 1e-5):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, eps) for _ in range(depth))

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = text_tokens
        for block in self.blocks:
            x = block(x, image_tokens)
        return x


class ContrastiveAlignment(nn.Module):
    """MUSK + auxiliary decoder: ``forward`` on an image-text batch returns CLIP and MLM losses.

    ``clip_text``: ``"masked"`` (the authors' code) or ``"clean"`` caption for the CLIP embedding;
    ``max_logit_scale``: None (the authors') or a clamp applied after every step (CLIP: ln 100).
    """

    def __init__(self, model: nn.Module, decoder_depth: int = 4, mlm_weight: float = 0.1,
                 decoder_heads: int = 16, clip_text: Literal["masked", "clean"] = "masked",
                 max_logit_scale: float | None = None):
        super().__init__()
        if clip_text not in ("masked", "clean"):
            raise ValueError(f"clip_text must be 'masked' or 'clean', got {clip_text!r}")
        cfg = model.config
        self.model, self.mlm_weight = model, mlm_weight
        self.clip_text, self.max_logit_scale = clip_text, max_logit_scale
        self.decoder = CrossAttentionDecoder(cfg.embed_dim, decoder_heads, decoder_depth)
        self.mlm_head = nn.Linear(cfg.embed_dim, cfg.vocab_size)
        model.beit3.vision_embed.mask_token.requires_grad_(False)  # no masked patches in stage 2

    def after_step(self) -> None:
        """Clamp the logit scale to [0, ``max_logit_scale``] after every optimiser step, if set."""
        if self.max_logit_scale is not None:
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, self.max_logit_scale)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor,
                masked_ids: torch.Tensor | None = None, mlm_labels: torch.Tensor | None = None,
                **_) -> dict[str, torch.Tensor]:
        m = self.model
        img_tokens = m.encode_image_tokens(image)
        img = F.normalize(m.vision_head(img_tokens[:, 0]), dim=-1)
        masked = masked_ids is not None
        text_tokens = m.encode_text_tokens(masked_ids if masked else input_ids, padding_mask)
        clip_tokens = text_tokens
        if masked and self.clip_text == "clean":
            clip_tokens = m.encode_text_tokens(input_ids, padding_mask)
        txt = F.normalize(m.language_head(clip_tokens[:, 0]), dim=-1)
        loss_clip, acc = clip_loss(img, txt, m.logit_scale)
        out = {"clip_loss": loss_clip.detach(), "clip_acc": acc.detach(),
               "logit_scale": m.logit_scale.detach().exp()}
        loss = loss_clip
        if self.mlm_weight > 0 and masked:
            h = self.decoder(text_tokens, img_tokens[:, 1:])
            sel = mlm_labels != -100
            mlm_loss, mlm_acc = masked_token_loss(self.mlm_head(h[sel]), mlm_labels[sel])
            loss = loss + self.mlm_weight * mlm_loss
            out.update(mlm_loss=mlm_loss.detach(), mlm_acc=mlm_acc)
        out["loss"] = loss
        return out
