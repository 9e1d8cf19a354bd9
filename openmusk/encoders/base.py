"""What every patch encoder offers, the registry that finds one by name, and the generic adapters.

An encoder has a ``name``, a ``transform`` (PIL RGB -> model input tensor), ``encode_image(images,
kind, normalize)``, ``has_text`` and, when it has a text tower, ``encode_text(texts)``; ``dim(kind)``
is its feature width. ``kind`` is ``"embed"`` (the cross-modal embedding used for zero-shot and
retrieval) or ``"probe"`` (the features for linear probes, few-shot, kNN and slide MIL). An encoder
may split its transform in two for speed: ``worker_transform`` (PIL -> uint8 (S, S, 3), run in
DataLoader workers) and ``batch_transform`` (uint8 batch -> model input, once per batch).

``load_encoder("musk", weights=..., device=..., precision=...)`` builds one by registry name or
``module:function`` (a user's factory returning an encoder, or ``(nn.Module, transform)``).
"""
from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from openmusk.core.registry import Registry
from openmusk.core.runtime import autocast, resolve_device, resolve_precision

__all__ = ["Encoder", "FEATURE_KINDS", "ENCODERS", "register_encoder", "load_encoder", "list_encoders",
           "encoder_info", "check_kind", "CallableEncoder", "ModuleEncoder"]

FEATURE_KINDS = ("embed", "probe")
ENCODERS = Registry("encoder")


def register_encoder(name: str, help: str = "") -> Callable:
    """Decorator: make a factory ``f(**kwargs) -> Encoder`` loadable as ``load_encoder(name)``."""
    return ENCODERS.register(name, help)


@runtime_checkable
class Encoder(Protocol):
    """What the benchmarks, slide extraction and embedding commands need from a model."""

    name: str
    transform: Callable[[Any], torch.Tensor]

    def encode_image(self, images: torch.Tensor, kind: str = "embed", normalize: bool = True) -> torch.Tensor: ...

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor: ...

    @property
    def has_text(self) -> bool: ...


def check_kind(kind: str) -> None:
    """Raise unless ``kind`` is a feature kind."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def load_encoder(name: str, *, device: str | torch.device | None = None, precision: str | None = None,
                 **kwargs: Any) -> Any:
    """An encoder by registry name (``list_encoders()``) or ``module:function``.

    ``device`` and ``precision`` are passed to factories that take them; the encoder's ``spec``
    records the name and arguments, which features files store to say what made them.
    """
    factory = ENCODERS.get(name)
    call = dict(kwargs)
    for key, value in (("device", device), ("precision", precision)):
        if value is not None and _accepts(factory, key):
            call[key] = value
    enc = factory(**call)
    if isinstance(enc, tuple) and len(enc) == 2 and isinstance(enc[0], torch.nn.Module):
        enc = ModuleEncoder(enc[0], enc[1], name=kwargs.get("name") or name.rsplit(":", 1)[-1],
                            device=device, precision=precision)
    for attr in ("encode_image", "transform", "name"):
        if not hasattr(enc, attr):
            raise TypeError(f"encoder factory {name!r} returned {type(enc).__name__}, which has no {attr!r}; "
                            "return an encoder or (nn.Module, transform)")
    enc.spec = {"encoder": name, **{k: v for k, v in kwargs.items() if _jsonable(v)}}
    return enc


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def list_encoders() -> dict[str, str]:
    """Registered encoder names with one line each."""
    import openmusk.encoders  # noqa: F401 - registers the built-in encoders

    return ENCODERS.describe()


def encoder_info(encoder: Any, kind: str = "probe", precision: str | None = None) -> dict[str, Any]:
    """Attributes a features file stores about the encoder that made it."""
    from openmusk.core import __version__

    spec = getattr(encoder, "spec", {"encoder": encoder.name})
    return {"encoder": str(spec.get("encoder", encoder.name)), "encoder_name": encoder.name,
            "encoder_spec": json.dumps(spec, sort_keys=True),
            "encoder_weights": str(spec.get("weights") or getattr(encoder, "weights", "") or ""),
            "feature_kind": kind, "precision": precision or getattr(encoder, "precision", "fp32"),
            "encoder_version": f"openmusk {__version__}"}


class CallableEncoder:
    """Any function images -> features (and optionally texts -> features) as an encoder."""

    def __init__(self, name: str, image_fn: Callable[[torch.Tensor], torch.Tensor],
                 transform: Callable, text_fn: Callable[[Sequence[str]], torch.Tensor] | None = None,
                 probe_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 normalize: bool = True):
        self.name, self.transform = name, transform
        self.image_fn, self.text_fn, self.probe_fn = image_fn, text_fn, probe_fn
        self.normalize = normalize
        self.device = torch.device("cpu")
        self.precision = "fp32"

    @property
    def has_text(self) -> bool:
        """Whether a text function was given."""
        return self.text_fn is not None

    def _out(self, x: torch.Tensor, normalize: bool | None) -> torch.Tensor:
        """Float features, L2-normalised unless switched off here or at construction."""
        x = torch.as_tensor(x).float()
        return F.normalize(x, dim=-1) if (self.normalize if normalize is None else normalize) else x

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, kind: str = "embed", normalize: bool | None = None) -> torch.Tensor:
        """``image_fn`` (or ``probe_fn`` for probe features when given) on a batch."""
        check_kind(kind)
        fn = self.probe_fn if (kind == "probe" and self.probe_fn is not None) else self.image_fn
        return self._out(fn(images), normalize)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``text_fn`` on a list of texts; an image-only encoder raises ValueError."""
        if self.text_fn is None:
            raise ValueError(f"encoder {self.name!r} has no text tower")
        return self._out(self.text_fn(list(texts)), None)

    def dim(self, kind: str = "probe") -> int:
        """Feature width, measured once on a blank image through the transform."""
        from PIL import Image

        size = getattr(self, "img_size", None) or 224
        x = self.transform(Image.new("RGB", (size, size), (255, 255, 255))).unsqueeze(0)
        return int(self.encode_image(x, kind).shape[-1])


class ModuleEncoder(CallableEncoder):
    """An image-only ``nn.Module`` returning pooled (B, D) features (a timm model made with
    ``num_classes=0``, a user's ViT) with its transform; features are L2-normalised by default."""

    def __init__(self, model: torch.nn.Module, transform: Callable, name: str = "module",
                 device: str | torch.device | None = None, precision: str | None = None):
        self.model = model.eval()
        params = list(model.parameters())
        dev = resolve_device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
        self.model.to(dev)
        prec = resolve_precision(precision or "fp32", dev)

        def image_fn(x: torch.Tensor) -> torch.Tensor:
            with autocast(dev, prec):
                out = self.model(x.to(dev))
            if out.ndim != 2:
                raise ValueError(f"encoder {name!r} returned features of shape {tuple(out.shape)}; "
                                 "expected (B, D) (e.g. a timm model made with num_classes=0)")
            return out

        super().__init__(name, image_fn, transform)
        self.device, self.precision = dev, prec

    @torch.no_grad()
    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, P, D) per-patch tokens from the module's ``forward_features`` (timm's convention):
        a ViT's token sequence without its ``num_prefix_tokens`` (CLS, registers), or a CNN's
        (B, C, H, W) map as H*W tokens."""
        fn = getattr(self.model, "forward_features", None)
        if fn is None:
            raise ValueError(f"encoder {self.name!r} has no forward_features, so no per-patch tokens")
        with autocast(self.device, self.precision):
            out = fn(images.to(self.device))
        if out.ndim == 4:
            return out.flatten(2).transpose(1, 2).float()
        if out.ndim != 3:
            raise ValueError(f"encoder {self.name!r}: forward_features gave shape {tuple(out.shape)}, "
                             "expected (B, tokens, D) or (B, C, H, W)")
        return out[:, int(getattr(self.model, "num_prefix_tokens", 1)):].float()
