"""Encoders under evaluation: MUSK, and adapters so any other model is benchmarked in the same run.

An encoder has a ``name`` (the feature-cache key), a ``transform`` (PIL RGB -> tensor),
``encode_image(images, kind)`` and, when it has a text tower, ``encode_text(texts)``. ``kind`` is
``"embed"`` (the cross-modal embedding used for zero-shot and retrieval) or ``"probe"`` (the
features fed to linear probes, few-shot and kNN). For MUSK these are the single-scale head output
and the 2D multiscale CLS features of the paper; other encoders return the same vector for both.

An encoder may also split its transform in two for speed: ``worker_transform`` (PIL -> uint8
array-like tensor, run in DataLoader workers) and ``batch_transform`` (uint8 batch -> model input, run once
per batch); together they must equal ``transform``. Workers then do less work and send a quarter
of the bytes.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

__all__ = ["Encoder", "MuskEncoder", "CallableEncoder", "OpenClipEncoder", "TimmEncoder",
           "musk_encoder", "open_clip_encoder", "timm_encoder", "color_stats_encoder",
           "FEATURE_KINDS"]

FEATURE_KINDS = ("embed", "probe")


@runtime_checkable
class Encoder(Protocol):
    """What the benchmark needs from a model."""

    name: str
    transform: Callable[[Any], torch.Tensor]

    def encode_image(self, images: torch.Tensor, kind: str = "embed") -> torch.Tensor: ...

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor: ...

    @property
    def has_text(self) -> bool: ...


def _check_kind(kind: str) -> None:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on the model's device (CUDA fp16/bf16 or CPU bf16); a no-op for float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class MuskUint8Transform:
    """The MUSK resize + centre crop as a uint8 (S, S, 3) tensor; channels move and values are
    normalised once per batch (stacking channel-first views of HWC arrays is a slow strided copy)."""

    def __init__(self, img_size: int):
        self.img_size = img_size

    def __call__(self, img) -> torch.Tensor:
        import numpy as np

        from openmusk.data.transforms import center_crop, resize_shorter_side

        img = center_crop(resize_shorter_side(img.convert("RGB"), self.img_size), self.img_size)
        return torch.from_numpy(np.array(img, dtype=np.uint8))


class MuskEncoder:
    """MUSK: single-scale head embeddings for zero-shot/retrieval, multiscale features for probes."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, transform: Callable | None = None,
                 name: str | None = None, amp_dtype: torch.dtype | None = None, max_len: int = 100):
        import openmusk

        self.model = model.eval()
        self.tokenizer = tokenizer or openmusk.get_tokenizer()
        self.transform = transform or openmusk.get_transform(img_size=model.config.img_size)
        if transform is None:  # the default transform split into worker and batch halves
            self.worker_transform = MuskUint8Transform(model.config.img_size)
        self.name = name or "musk"
        self.amp_dtype = amp_dtype
        self.max_len = max_len
        self.device = next(model.parameters()).device

    @property
    def has_text(self) -> bool:
        """MUSK always has its language side."""
        return True

    def batch_transform(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 batch from ``worker_transform`` -> normalised (B, 3, S, S) float."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float()
        # MUSK's (v / 255 - 0.5) / 0.5 equals v / 127.5 - 1 bit for bit for every uint8 v
        # (halving and doubling are exact in binary), in two in-place passes instead of four
        return x.div_(127.5).sub_(1.0)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, kind: str = "embed") -> torch.Tensor:
        """(B, D) head embeddings (``embed``) or (B, 2D) multiscale features (``probe``), normalised."""
        _check_kind(kind)
        images = images.to(self.device, non_blocking=True)
        with _autocast(self.device, self.amp_dtype):
            if kind == "embed":
                out = self.model.encode_image(images, head=True, normalize=True)
            else:
                out = self.model.encode_image(images, head=False, normalize=True, multiscale=True)
        return out.float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, D) normalised head embeddings of texts (100 tokens, as in MUSK)."""
        ids, pad = self.tokenizer(list(texts), max_len=self.max_len)
        with _autocast(self.device, self.amp_dtype):
            out = self.model.encode_text(ids.to(self.device), pad.to(self.device), head=True,
                                         normalize=True)
        return out.float()


class CallableEncoder:
    """Any function images -> features (and optionally texts -> features) as an encoder."""

    def __init__(self, name: str, image_fn: Callable[[torch.Tensor], torch.Tensor],
                 transform: Callable, text_fn: Callable[[Sequence[str]], torch.Tensor] | None = None,
                 probe_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 normalize: bool = True):
        self.name, self.transform = name, transform
        self.image_fn, self.text_fn, self.probe_fn = image_fn, text_fn, probe_fn
        self.normalize = normalize

    @property
    def has_text(self) -> bool:
        """Whether a text function was given."""
        return self.text_fn is not None

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        """Float features, L2-normalised unless ``normalize=False``."""
        x = torch.as_tensor(x).float()
        return F.normalize(x, dim=-1) if self.normalize else x

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, kind: str = "embed") -> torch.Tensor:
        """``image_fn`` (or ``probe_fn`` for probe features when given) on a batch."""
        _check_kind(kind)
        fn = self.probe_fn if (kind == "probe" and self.probe_fn is not None) else self.image_fn
        return self._out(fn(images))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``text_fn`` on a list of texts; an image-only encoder raises ValueError."""
        if self.text_fn is None:
            raise ValueError(f"encoder {self.name!r} has no text tower")
        return self._out(self.text_fn(list(texts)))


class OpenClipEncoder(CallableEncoder):
    """An open_clip model (``encode_image`` / ``encode_text``) with its preprocess and tokenizer;
    embeddings are L2-normalised, as CLIP_benchmark uses them for every task."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 name: str = "open_clip", amp_dtype: torch.dtype | None = None):
        model = model.eval()
        device = next(model.parameters()).device

        def image_fn(x: torch.Tensor) -> torch.Tensor:
            with _autocast(device, amp_dtype):
                return model.encode_image(x.to(device))

        def text_fn(texts: Sequence[str]) -> torch.Tensor:
            with _autocast(device, amp_dtype):
                return model.encode_text(tokenizer(list(texts)).to(device))

        super().__init__(name, image_fn, preprocess, text_fn=text_fn)
        self.model = model


class TimmEncoder(CallableEncoder):
    """An image-only ``nn.Module`` returning pooled features, e.g. a timm model made with
    ``num_classes=0``; features are L2-normalised."""

    def __init__(self, model: torch.nn.Module, transform: Callable, name: str = "timm",
                 amp_dtype: torch.dtype | None = None):
        model = model.eval()
        device = next(model.parameters()).device

        def image_fn(x: torch.Tensor) -> torch.Tensor:
            with _autocast(device, amp_dtype):
                out = model(x.to(device))
            if out.ndim != 2:
                raise ValueError(f"encoder {name!r} returned features of shape {tuple(out.shape)}; "
                                 "expected (B, D): create the timm model with num_classes=0")
            return out

        super().__init__(name, image_fn, transform)
        self.model = model


_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _amp(dtype: str) -> torch.dtype | None:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def musk_encoder(model: str | None = "musk_large_patch16_384", pretrained: str | None = None,
                 device: str = "cpu", dtype: str = "float32", name: str | None = None) -> MuskEncoder:
    """A MUSK encoder from a config name and/or weights (``hf_hub:xiangjx/musk`` or a file)."""
    import openmusk

    m = openmusk.create_model(model, pretrained=pretrained, device=device)
    return MuskEncoder(m, amp_dtype=_amp(dtype), name=name or model or "musk")


def open_clip_encoder(model: str, pretrained: str | None = None, device: str = "cpu",
                      dtype: str = "float32", name: str | None = None) -> OpenClipEncoder:
    """An open_clip model by name (``pip install open_clip_torch``), e.g. ``hf-hub:...`` CONCH/PLIP."""
    try:
        import open_clip
    except ImportError as e:
        raise ImportError("open_clip encoders need `pip install open_clip_torch`") from e
    m, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    return OpenClipEncoder(m, preprocess, open_clip.get_tokenizer(model), name=name or model,
                           amp_dtype=_amp(dtype))


def timm_encoder(model: str, pretrained: bool = True, device: str = "cpu", dtype: str = "float32",
                 name: str | None = None, **kwargs: Any) -> TimmEncoder:
    """A timm image model by name (``pip install timm``), pooled features, with its own transform."""
    try:
        import timm
    except ImportError as e:
        raise ImportError("timm encoders need `pip install timm`") from e
    m = timm.create_model(model, pretrained=pretrained, num_classes=0, **kwargs).to(device)
    cfg = timm.data.resolve_data_config({}, model=m)
    return TimmEncoder(m, timm.data.create_transform(**cfg), name=name or model, amp_dtype=_amp(dtype))


def color_stats_encoder(img_size: int = 224, bins: int = 8, name: str = "color_stats") -> CallableEncoder:
    """A stain-colour baseline: per-channel histograms and moments of the image (no learning).

    What a benchmark result must beat to show more than colour; image-only.
    """
    from openmusk.data.transforms import get_transform

    edges = torch.linspace(-1.0, 1.0, bins + 1)[1:-1]

    def image_fn(x: torch.Tensor) -> torch.Tensor:
        flat = x.float().flatten(2)  # (B, 3, HW), values in [-1, 1]
        idx = torch.bucketize(flat, edges)
        hist = torch.zeros(*flat.shape[:2], bins).scatter_add_(2, idx, torch.ones_like(flat))
        hist = hist / flat.shape[-1]
        return torch.cat([hist.flatten(1), flat.mean(-1), flat.std(-1)], dim=1)

    return CallableEncoder(name, image_fn, get_transform(img_size=img_size))
