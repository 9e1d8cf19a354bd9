"""Stage 1, unified masked modelling: MIM on images (VQ-KD targets) and MLM on texts, one optimiser.

The image side replaces block-masked patches with ``mask_token`` and predicts the tokenizer's id
of each masked patch; the text side predicts the original id of 15% of tokens (80/10/10). Both
heads belong to this objective, not to the model, so the exported model is the plain MUSK
checkpoint. Losses are normalised by the number of targets over all ranks, so N processes
compute the same gradient as one process with the same global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openmusk.core.dist import all_reduce_sum, world_size
from openmusk.pretrain.vqkd import VQKD

__all__ = ["MLMHead", "MaskedModelling", "masked_token_loss"]


class MLMHead(nn.Module):
    """Dense + GELU + LayerNorm, then logits over the vocabulary (decoder tied to an embedding)."""

    def __init__(self, dim: int, embedding: nn.Embedding, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))
        object.__setattr__(self, "embedding", embedding)  # tied weight, owned by the model

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(h)))
        return F.linear(h, self.embedding.weight, self.bias)


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy summed over targets / global mean count, accuracy) for (M, C) logits.

    The divisor is the number of targets over all ranks divided by the world size, so that the
    DDP gradient average equals the mean over every target of the global batch.
    """
    n = all_reduce_sum(torch.tensor(float(targets.numel()), device=logits.device))
    denom = (n / world_size()).clamp(min=1.0)
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / denom
    correct = all_reduce_sum((logits.argmax(-1) == targets).sum().float())
    return loss, correct / n.clamp(min=1.0)


class MaskedModelling(nn.Module):
    """MUSK + MIM head + MLM head; ``forward`` takes an image batch and a text batch, returns losses."""

    def __init__(self, model: nn.Module, tokenizer: VQKD):
        super().__init__()
        cfg = model.config
        tok_grid = tokenizer.config.grid
        if tok_grid != cfg.grid_size:
            raise ValueError(f"the VQ-KD tokenizer has a {tok_grid}x{tok_grid} patch grid but the model "
                             f"{cfg.grid_size}x{cfg.grid_size}: train the tokenizer at the model's grid")
        self.model = model
        self.mim_head = nn.Linear(cfg.embed_dim, tokenizer.config.codebook_size)
        nn.init.trunc_normal_(self.mim_head.weight, std=0.02)
        nn.init.zeros_(self.mim_head.bias)
        self.mlm_head = MLMHead(cfg.embed_dim, model.beit3.text_embed, cfg.layer_norm_eps)
        tokenizer.requires_grad_(False)
        object.__setattr__(self, "tokenizer", tokenizer.eval())  # frozen, not saved with the objective
        # parameters stage 1 never uses: frozen so that DDP and the optimiser skip them
        for p in (model.vision_head.weight, model.language_head.weight, model.logit_scale):
            p.requires_grad_(False)

    def _tokenizer_input(self, images: torch.Tensor) -> torch.Tensor:
        s = self.tokenizer.config.img_size
        if images.shape[-1] != s:
            images = F.interpolate(images.float(), size=(s, s), mode="bicubic", align_corners=False)
        return images

    def forward(self, image: torch.Tensor, vision_mask: torch.Tensor, masked_ids: torch.Tensor,
                padding_mask: torch.Tensor, mlm_labels: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
            self.tokenizer.to(image.device)
            targets = self.tokenizer.encode_ids(self._tokenizer_input(image.float()))
        vision_mask = vision_mask.bool()
        tokens = self.model.forward_tokens(images=image, vision_mask=vision_mask)[:, 1:]
        mim_loss, mim_acc = masked_token_loss(self.mim_head(tokens[vision_mask]), targets[vision_mask])
        text = self.model.forward_tokens(input_ids=masked_ids, padding_mask=padding_mask)
        sel = mlm_labels != -100
        mlm_loss, mlm_acc = masked_token_loss(self.mlm_head(text[sel]), mlm_labels[sel])
        return {"loss": mim_loss + mlm_loss, "mim_loss": mim_loss.detach(),
                "mlm_loss": mlm_loss.detach(), "mim_acc": mim_acc, "mlm_acc": mlm_acc}
