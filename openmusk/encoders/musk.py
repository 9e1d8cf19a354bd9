"""MUSK as an encoder: single-scale head embeddings for zero-shot and retrieval, multiscale (2D)
CLS features for probes and slides, and the language side for texts."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch

from openmusk.core.runtime import autocast, precision_dtype, resolve_device, resolve_precision
from openmusk.encoders.base import check_kind, register_encoder

__all__ = ["MuskEncoder", "MuskUint8Transform", "musk_encoder", "normalize_uint8"]

DEFAULT_WEIGHTS = "hf_hub:xiangjx/musk"


def normalize_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [-1, 1], MUSK's mean = std = 0.5 normalisation.

    ``(v / 255 - 0.5) / 0.5`` equals ``v / 127.5 - 1`` bit for bit for every uint8 ``v`` (halving
    and doubling are exact in binary), done in two in-place passes instead of four.
    """
    return x.float().div_(127.5).sub_(1.0)


class MuskUint8Transform:
    """The MUSK resize + centre crop as a uint8 (S, S, 3) tensor; channels move and values are
    normalised once per batch (stacking channel-first views of HWC arrays is a slow strided copy)."""

    def __init__(self, img_size: int):
        self.img_size = img_size

    def __call__(self, img) -> torch.Tensor:
        import numpy as np

        from openmusk.core.images import to_rgb
        from openmusk.data.transforms import center_crop, resize_shorter_side

        img = center_crop(resize_shorter_side(to_rgb(img), self.img_size), self.img_size)
        return torch.from_numpy(np.array(img, dtype=np.uint8))


class MuskEncoder:
    """MUSK: head embeddings (``embed``) and multiscale or single-scale CLS features (``probe``)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, transform: Callable | None = None,
                 name: str | None = None, precision: str = "fp32", max_len: int = 100,
                 multiscale: bool = True):
        import openmusk.text.tokenizer as tok
        from openmusk.data.transforms import get_transform

        self.model = model.eval()
        self.tokenizer = tokenizer or tok.get_tokenizer()
        self.img_size = int(model.config.img_size)
        self.transform = transform or get_transform(img_size=self.img_size)
        if transform is None:  # the default transform split into worker and batch halves
            self.worker_transform = MuskUint8Transform(self.img_size)
        self.name = name or "musk"
        self.max_len = max_len
        self.multiscale = multiscale
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)

    def _autocast(self):
        """Autocast at the encoder's precision, or nothing when the model was already cast once to it."""
        if getattr(self.model, "inference_dtype", None) == precision_dtype(self.precision):
            return nullcontext()
        return autocast(self.device, self.precision)

    @property
    def has_text(self) -> bool:
        """MUSK always has its language side."""
        return True

    def dim(self, kind: str = "probe") -> int:
        """Width of ``embed`` (the head) or ``probe`` features (2D when multiscale)."""
        check_kind(kind)
        d = int(self.model.config.embed_dim)
        return d * 2 if kind == "probe" and self.multiscale else d

    def batch_transform(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 batch from ``worker_transform`` -> normalised (B, 3, S, S) float."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
        return normalize_uint8(x)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, kind: str = "embed", normalize: bool = True) -> torch.Tensor:
        """(B, D) head embeddings (``embed``) or (B, 2D | D) CLS features (``probe``), float32."""
        check_kind(kind)
        images = images.to(self.device, non_blocking=True)
        with self._autocast():
            if kind == "embed":
                out = self.model.encode_image(images, head=True, normalize=normalize)
            else:
                out = self.model.encode_image(images, head=False, normalize=normalize,
                                              multiscale=self.multiscale)
        return out.float()

    @torch.no_grad()
    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, P, D) patch tokens after the final LayerNorm, CLS dropped (e.g. a VQ-KD teacher), float32."""
        with self._autocast():
            return self.model.encode_image_tokens(images.to(self.device, non_blocking=True))[:, 1:].float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, D) normalised head embeddings of texts; long texts are embedded by windows and
        combined (:func:`openmusk.text.report_embeddings`), never silently cut."""
        from openmusk.text.report import report_embeddings

        with self._autocast():
            return report_embeddings(self.model, self.tokenizer, list(texts), max_len=self.max_len).float()


@register_encoder("musk", "MUSK (released weights by default): 2D multiscale probe features, head embeddings")
def musk_encoder(weights: str | None = DEFAULT_WEIGHTS, arch: str | None = None, device: Any = None,
                 precision: str | None = None, name: str | None = None, multiscale: bool = True,
                 model: torch.nn.Module | None = None) -> MuskEncoder:
    """MUSK from weights (a file, ``hf_hub:owner/name``, or ``random[:ARCH]``) or a built ``model``.

    A model built here for bf16/fp16 is cast once for inference (LayerNorm, GELU and softmax stay in
    float32: :func:`openmusk.model.inference.cast_for_inference`); a ``model`` given is left as it is.
    """
    dev = resolve_device(device)
    if model is None:
        from openmusk.model import create_model
        from openmusk.model.inference import cast_for_inference

        model = create_model(arch, pretrained=weights or "random", device=dev)
        cast_for_inference(model, resolve_precision(precision or "fp32", dev))
    m = model.to(dev)
    return MuskEncoder(m, name=name or "musk", precision=precision or "fp32", multiscale=multiscale)


@register_encoder("musk_singlescale", "MUSK with D-wide single-scale CLS probe features")
def musk_singlescale_encoder(**kwargs: Any) -> MuskEncoder:
    """MUSK whose probe features are the single-scale CLS (D) instead of the multiscale 2D."""
    kwargs.setdefault("name", "musk_singlescale")
    return musk_encoder(multiscale=False, **kwargs)
