"""The BEiT-3 VQA head on MUSK: fused image+question tokens, a CLS pooler, an MLP over answers.

Image and question go through MUSK as one sequence ``[image tokens; question tokens]`` (vision
experts for the image part, language experts for the question, joint attention), the first token of
the fused output (the image CLS) is pooled (LayerNorm, Linear, Tanh), and an MLP (Linear D->2D,
LayerNorm, GELU, Linear 2D->answers) scores the answer vocabulary, as BEiT-3 does for VQAv2.
With ``question_only=True`` the same heads read the question alone through the language experts
(the first token is then BOS): the control that shows how much the image contributes.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["VQAPooler", "MuskVQA", "FREEZE_MODES", "RENAMED_FREEZE_MODES", "freeze_mode", "set_trainable"]

# what is frozen: nothing, all but the last ``last_k`` encoder layers, or the whole backbone
FREEZE_MODES = ("none", "last_k", "encoder")
RENAMED_FREEZE_MODES = {"full": "none", "heads": "encoder"}  # old names, accepted with a notice
# MUSK parameters that VQA never uses: the retrieval heads and the CLIP temperature
_UNUSED = ("vision_head.", "language_head.", "logit_scale")


class VQAPooler(nn.Module):
    """BEiT-3's pooler: LayerNorm, Linear, Tanh on the first token of the fused sequence."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.norm(tokens[:, 0, :])))


class MuskVQA(nn.Module):
    """MUSK backbone + VQA pooler + answer classifier; ``forward`` returns answer logits (B, A)."""

    def __init__(self, backbone: nn.Module, num_answers: int, question_only: bool = False) -> None:
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"num_answers must be positive, got {num_answers}")
        dim = backbone.config.embed_dim
        eps = backbone.config.layer_norm_eps
        self.backbone = backbone
        self.question_only = question_only
        self.num_answers = num_answers
        self.pooler = VQAPooler(dim, eps)
        self.classifier = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim, eps=eps),
                                        nn.GELU(), nn.Linear(2 * dim, num_answers))
        for m in list(self.pooler.modules()) + list(self.classifier.modules()):
            if isinstance(m, nn.Linear):  # BEiT-3 initialises task heads this way
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def heads(self) -> nn.ModuleDict:
        """The task-specific modules (pooler and classifier), trained at the head learning rate."""
        return nn.ModuleDict({"pooler": self.pooler, "classifier": self.classifier})

    def forward(self, images: torch.Tensor | None, input_ids: torch.Tensor,
                padding_mask: torch.Tensor) -> torch.Tensor:
        if self.question_only:
            tokens = self.backbone.forward_tokens(input_ids=input_ids, padding_mask=padding_mask)
        else:
            if images is None:
                raise ValueError("MuskVQA: images are required (the model was built with the image)")
            tokens = self.backbone.forward_tokens(images=images, input_ids=input_ids,
                                                  padding_mask=padding_mask)
        return self.classifier(self.pooler(tokens))


def freeze_mode(mode: str) -> str:
    """The freeze mode's current name: old ``full``/``heads`` become ``none``/``encoder`` with a notice."""
    if mode in RENAMED_FREEZE_MODES:
        from openmusk.core.config import notice

        notice(f"freeze: {mode} is now spelled freeze: {RENAMED_FREEZE_MODES[mode]}")
        return RENAMED_FREEZE_MODES[mode]
    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze mode {mode!r} unknown; use one of {FREEZE_MODES}")
    return mode


def set_trainable(model: MuskVQA, mode: Literal["none", "last_k", "encoder"] = "none",
                  last_k: int = 0) -> int:
    """Freeze the MUSK encoder ('encoder'), all but its last ``last_k`` layers ('last_k'), or nothing ('none').

    The heads are always trained; the retrieval heads and logit scale are always frozen (VQA does
    not use them). Returns the number of trainable parameters.
    """
    mode = freeze_mode(mode)
    encoder = model.backbone.beit3.encoder
    depth = len(encoder.layers)
    if mode == "last_k" and not 0 < last_k <= depth:
        raise ValueError(f"last_k must be in 1..{depth} for freeze mode 'last_k', got {last_k}")
    for name, p in model.backbone.named_parameters():
        p.requires_grad = mode == "none" and not name.startswith(_UNUSED)
    if mode == "last_k":
        for layer in list(encoder.layers)[depth - last_k:]:
            layer.requires_grad_(True)
        encoder.layer_norm.requires_grad_(True)
    model.heads().requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
