"""Stage 1, unified masked modelling: MIM on images (VQ-KD targets) and MLM on texts, one optimiser.

As the authors' ``1_mask_pretrain/modeling_musk.py`` computes it: the image side replaces the
block-masked patches with ``mask_token`` and predicts, with a bias-free linear ``mim_head``, the
tokenizer's id of each masked patch; the tokenizer reads the authors' second view of the crop,
which equals the MUSK-normalised image (:meth:`MaskedModelling.mim_targets`). The
text side predicts the original id at every position that holds ``<mask>`` (``mlm_labels``) with a
bias-free linear ``mlm_head`` over the vocabulary, untied from the text embedding. Loss =
MIM + MLM. Both heads belong to this objective, not to the model, so the exported model is the
plain MUSK checkpoint. Losses are normalised by the number of targets over all ranks, so N
processes compute the same gradient as one process with the same global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openmusk.core.dist import all_reduce_sum, world_size
from openmusk.pretrain.vqkd import VQKD

__all__ = ["MaskedModelling", "masked_token_loss", "linear_head"]


@torch.no_grad()
def _trunc_normal_one_std(weight: torch.Tensor, std: float) -> None:
    """N(0, std) cut at +-std, by redrawing the values outside (exact, and far faster on big
    vocabulary heads than the inverse-CDF ``nn.init.trunc_normal_``)."""
    x = torch.randn_like(weight)
    bad = x.abs() > 1
    while bool(bad.any()):
        x[bad] = torch.randn(int(bad.sum()), dtype=x.dtype, device=x.device)
        bad = x.abs() > 1
    weight.copy_(x * std)


def linear_head(dim: int, out: int, bias: bool = False) -> nn.Linear:
    """A linear head initialised as the authors' (truncated normal, std 0.02, cut at one std)."""
    head = nn.Linear(dim, out, bias=bias)
    _trunc_normal_one_std(head.weight, 0.02)
    if bias:
        nn.init.zeros_(head.bias)
    return head


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
        self.mim_head = linear_head(cfg.embed_dim, tokenizer.config.codebook_size)
        self.mlm_head = linear_head(cfg.embed_dim, cfg.vocab_size)
        tokenizer.requires_grad_(False)
        object.__setattr__(self, "tokenizer", tokenizer.eval())  # frozen, not saved with the objective
        # parameters stage 1 never uses: frozen so that DDP and the optimiser skip them
        for p in (model.vision_head.weight, model.language_head.weight, model.logit_scale):
            p.requires_grad_(False)

    @torch.no_grad()
    def mim_targets(self, image: torch.Tensor) -> torch.Tensor:
        """The tokenizer's ids (B, P) of the MUSK-normalised image: the authors' second view (the
        same crop, ``ToTensor`` only, then ``x * 2 - 1`` in the tokenizer) is this very tensor,
        since MUSK normalises with mean = std = 0.5."""
        with torch.autocast(image.device.type, enabled=False):
            self.tokenizer.to(image.device)
            return self.tokenizer.encode_ids(self._tokenizer_input(image.float()))

    def _tokenizer_input(self, images: torch.Tensor) -> torch.Tensor:
        s = self.tokenizer.config.img_size
        if images.shape[-1] != s:
            images = F.interpolate(images, size=(s, s), mode="bicubic", align_corners=False)
        return images

    def forward(self, image: torch.Tensor, vision_mask: torch.Tensor, masked_ids: torch.Tensor,
                padding_mask: torch.Tensor, mlm_labels: torch.Tensor, mim_ids: torch.Tensor | None = None,
                **_) -> dict[str, torch.Tensor]:
        """Losses of one step; ``mim_ids`` (B, P) are precomputed token ids (else the tokenizer's)."""
        targets = mim_ids if mim_ids is not None else self.mim_targets(image)
        vision_mask = vision_mask.bool()
        tokens = self.model.forward_tokens(images=image, vision_mask=vision_mask)[:, 1:]
        mim_loss, mim_acc = masked_token_loss(self.mim_head(tokens[vision_mask]), targets[vision_mask])
        text = self.model.forward_tokens(input_ids=masked_ids, padding_mask=padding_mask)
        sel = mlm_labels != -100
        mlm_loss, mlm_acc = masked_token_loss(self.mlm_head(text[sel]), mlm_labels[sel])
        return {"loss": mim_loss + mlm_loss, "mim_loss": mim_loss.detach(),
                "mlm_loss": mlm_loss.detach(), "mim_acc": mim_acc, "mlm_acc": mlm_acc}
