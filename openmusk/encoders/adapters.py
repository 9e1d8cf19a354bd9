"""Other foundation models as encoders, so slide features and benchmarks can compare them with
MUSK: open_clip (BiomedCLIP, QuiltNet ...), timm (any timm or timm hub model) and Hugging
Face transformers vision models. Each library is imported only when its encoder is built."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from openmusk.core.runtime import autocast, resolve_device, resolve_precision
from openmusk.encoders.base import CallableEncoder, ModuleEncoder, register_encoder

__all__ = ["OpenClipEncoder", "open_clip_encoder", "timm_encoder", "hf_encoder", "HFVisionModule"]


class OpenClipEncoder(CallableEncoder):
    """An open_clip model (``encode_image`` / ``encode_text``) with its preprocess and tokenizer;
    embeddings are L2-normalised, as CLIP_benchmark uses them for every task."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, name: str = "open_clip",
                 precision: str = "fp32"):
        model = model.eval()
        device = next(model.parameters()).device
        prec = resolve_precision(precision, device)

        def image_fn(x: torch.Tensor) -> torch.Tensor:
            with autocast(device, prec):
                return model.encode_image(x.to(device))

        def text_fn(texts: Sequence[str]) -> torch.Tensor:
            with autocast(device, prec):
                return model.encode_text(tokenizer(list(texts)).to(device))

        super().__init__(name, image_fn, preprocess, text_fn=text_fn)
        self.model, self.device, self.precision = model, device, prec


@register_encoder("open_clip", "an open_clip model by name (pip install open_clip_torch)")
def open_clip_encoder(model: str, weights: str | bool | None = None, device: Any = None,
                      precision: str | None = None, name: str | None = None) -> OpenClipEncoder:
    """An open_clip model, e.g. ``model="ViT-B-16"`` or an ``hf-hub:`` open_clip repo; ``weights`` is its pretrained
    tag or file (None: what the name brings, i.e. the hub weights of an ``hf-hub:`` model);
    False gives random weights (an architecture name only: ``hf-hub:`` models always load theirs)."""
    try:
        import open_clip
    except ImportError as e:
        raise ImportError("open_clip encoders need `pip install open_clip_torch`") from e
    hub = str(model).startswith("hf-hub:")
    if weights is False and hub:
        raise ValueError(f"open_clip {model!r} always loads its hub weights; for random weights name "
                         "its architecture (e.g. ViT-B-16) instead")
    if weights is True and not hub:
        raise ValueError(f"open_clip {model!r}: name the pretrained tag (e.g. weights: openai)")
    dev = resolve_device(device)
    tag = weights if isinstance(weights, str) else None
    m, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=tag, device=dev)
    return OpenClipEncoder(m, preprocess, open_clip.get_tokenizer(model), name=name or model,
                           precision=precision or "fp32")


@register_encoder("timm", "a timm image model by name, pooled features (pip install timm)")
def timm_encoder(model: str, weights: str | bool | None = True, device: Any = None,
                 precision: str | None = None, name: str | None = None, **kwargs: Any) -> ModuleEncoder:
    """A timm model with its own transform; ``weights`` False/None/'random' gives random init,
    True its default pretrained tag, a path its checkpoint file."""
    try:
        import timm
    except ImportError as e:
        raise ImportError("timm encoders need `pip install timm`") from e
    random_init = weights in (None, False, "false", "random", "")
    extra = {} if random_init or weights is True else {"pretrained_cfg_overlay": {"file": str(weights)}}
    m = timm.create_model(model, pretrained=not random_init, num_classes=0, **extra, **kwargs)
    cfg = timm.data.resolve_data_config({}, model=m)
    return ModuleEncoder(m, timm.data.create_transform(**cfg), name=name or model, device=device,
                         precision=precision)


class HFVisionModule(torch.nn.Module):
    """A transformers vision model as images -> (B, D): ``pooler_output`` when the model has one,
    else the first token of ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None and pooled.ndim == 2:
            return pooled
        return out.last_hidden_state[:, 0]


class _HFTransform:
    """PIL image -> the processor's (3, H, W) pixel values (picklable for DataLoader workers)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, img) -> torch.Tensor:
        return self.processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]


@register_encoder("hf", "a Hugging Face transformers vision model (id or local folder)")
def hf_encoder(model: str, weights: str | bool | None = None, device: Any = None, precision: str | None = None,
               name: str | None = None, revision: str | None = None) -> ModuleEncoder:
    """``AutoModel`` + ``AutoImageProcessor`` from a hub id or a ``save_pretrained`` folder
    (``weights`` overrides where the weights come from; False: the architecture, random weights)."""
    try:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
    except ImportError as e:
        raise ImportError("Hugging Face encoders need `pip install transformers`") from e
    source = weights if isinstance(weights, str) else model
    if weights is False:
        net = AutoModel.from_config(AutoConfig.from_pretrained(model, revision=revision))
    else:
        net = AutoModel.from_pretrained(source, revision=revision)
    processor = AutoImageProcessor.from_pretrained(source, revision=revision)
    return ModuleEncoder(HFVisionModule(net), _HFTransform(processor), name=name or str(model).rstrip("/").split("/")[-1],
                         device=device, precision=precision)
