"""The pathology foundation models the MUSK paper compared, as encoders: PLIP (transformers),
BiomedCLIP (open_clip), CONCH (its own ``conch`` package), UNI, Virchow / Virchow 2 and
Prov-GigaPath (timm hub models). Each loads through its own library, imported only when built,
with the preprocessing and feature its authors (and TRIDENT) use; weights come from the hub
(gated: accept each licence and ``hf auth login``), a local file, or ``weights=False`` for random.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from openmusk.core.runtime import autocast, resolve_device, resolve_precision
from openmusk.encoders.adapters import _HFTransform, open_clip_encoder
from openmusk.encoders.base import CallableEncoder, ModuleEncoder, register_encoder

__all__ = ["PathologyTransform", "HFClipEncoder", "ClsMeanPatch", "plip_encoder", "biomedclip_encoder",
           "conch_encoder", "uni_encoder", "virchow_encoder", "virchow2_encoder", "gigapath_encoder",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


class PathologyTransform:
    """PIL -> (3, crop, crop) tensor: shorter side to ``resize`` (bilinear or bicubic), centre crop,
    [0, 1], mean/std normalisation; what torchvision's Resize/CenterCrop/ToTensor/Normalize give
    on a PIL image (they resize with PIL), without torchvision."""

    def __init__(self, resize: int, crop: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear"):
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be bilinear or bicubic, got {interpolation!r}")
        self.resize, self.crop, self.interpolation = resize, crop, interpolation
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.img_size = crop

    def __call__(self, img: Image.Image) -> torch.Tensor:
        from openmusk.data.transforms import center_crop, to_tensor

        img = img.convert("RGB")
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if w <= h else (new_long, self.resize)
        resample = Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC
        return (to_tensor(center_crop(img.resize(size, resample), self.crop)) - self.mean) / self.std


def _need(module: str, what: str, install: str) -> Any:
    """Import ``module`` or say which encoder needs it and how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the {what} encoder needs `{install}` ({e})") from e


# ------------------------------------------------------------------------ CLIP through transformers
class HFClipEncoder(CallableEncoder):
    """A transformers ``CLIPModel`` with its image processor and tokenizer: projected embeddings
    (``get_image_features`` / ``get_text_features``), L2-normalised, for both feature kinds."""

    def __init__(self, model: torch.nn.Module, transform: Callable, tokenizer: Any, name: str,
                 device: Any = None, precision: str | None = None, max_length: int = 77):
        dev = resolve_device(device)
        self.model = model.eval().to(dev)
        prec = resolve_precision(precision or "fp32", dev)

        def pooled(out: Any) -> torch.Tensor:
            return out if isinstance(out, torch.Tensor) else out.pooler_output   # transformers 4 / 5

        def image_fn(x: torch.Tensor) -> torch.Tensor:
            with autocast(dev, prec):
                return pooled(self.model.get_image_features(pixel_values=x.to(dev)))

        def text_fn(texts: Sequence[str]) -> torch.Tensor:
            batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            with autocast(dev, prec):
                return pooled(self.model.get_text_features(input_ids=batch["input_ids"].to(dev),
                                                           attention_mask=batch["attention_mask"].to(dev)))

        super().__init__(name, image_fn, transform, text_fn=text_fn)
        self.device, self.precision = dev, prec
        self.img_size = int(model.config.vision_config.image_size)


@register_encoder("plip", "PLIP (vinid/plip, a CLIP ViT-B/32) through transformers")
def plip_encoder(model: str = "vinid/plip", weights: str | bool | None = None, device: Any = None,
                 precision: str | None = None, name: str | None = None, revision: str | None = None) -> HFClipEncoder:
    """PLIP, or any transformers CLIP checkpoint (hub id or ``save_pretrained`` folder); ``weights``
    False builds the architecture with random weights, a string loads weights from there."""
    tf = _need("transformers", "plip", "pip install transformers")
    source = weights if isinstance(weights, str) else model
    if weights is False:
        net = tf.CLIPModel(tf.CLIPConfig.from_pretrained(model, revision=revision))
    else:
        net = tf.CLIPModel.from_pretrained(source, revision=revision)
    processor = tf.CLIPImageProcessor.from_pretrained(model, revision=revision)
    tokenizer = tf.AutoTokenizer.from_pretrained(model, revision=revision)
    return HFClipEncoder(net, _HFTransform(processor), tokenizer, name=name or "plip", device=device,
                         precision=precision, max_length=int(net.config.text_config.max_position_embeddings))


@register_encoder("biomedclip", "BiomedCLIP (microsoft) through open_clip (pip install open_clip_torch)")
def biomedclip_encoder(weights: str | bool | None = None, device: Any = None, precision: str | None = None,
                       name: str | None = None) -> CallableEncoder:
    """BiomedCLIP's hub model through open_clip, which builds its PubMedBERT text tower."""
    return open_clip_encoder(BIOMEDCLIP, weights=weights, device=device, precision=precision,
                             name=name or "biomedclip")


# ------------------------------------------------------------------------ CONCH (its own package)
@register_encoder("conch", "CONCH (MahmoodLab) through its own package (github.com/mahmoodlab/CONCH)")
def conch_encoder(weights: str | bool | None = None, device: Any = None,
                  precision: str | None = None, name: str | None = None) -> CallableEncoder:
    """CONCH ViT-B/16: ``embed`` is the contrastive projection (512), ``probe`` the unprojected
    pooled feature (512, TRIDENT's ``conch_v1``); texts through CONCH's tokenizer. ``weights``:
    None / True the hub's (``hf_hub:MahmoodLab/conch``), or a ``pytorch_model.bin`` path."""
    conch = _need("conch.open_clip_custom", "conch", "pip install git+https://github.com/mahmoodlab/CONCH")
    if weights is None or weights is True:
        weights = "hf_hub:MahmoodLab/conch"
    if weights is False or not weights:
        raise ValueError("conch: CONCH is built from its checkpoint; give weights (hf_hub:MahmoodLab/conch or "
                         "a pytorch_model.bin path)")
    weights = str(weights)
    if weights.startswith("hf-hub:"):   # CONCH understands only the hf_hub: spelling
        weights = "hf_hub:" + weights[len("hf-hub:"):]
    dev = resolve_device(device)
    model, preprocess = conch.create_model_from_pretrained("conch_ViT-B-16", checkpoint_path=weights, device=dev)
    model.eval()
    prec = resolve_precision(precision or "fp32", dev)
    tokenizer = conch.get_tokenizer()

    def image_fn(x: torch.Tensor) -> torch.Tensor:
        with autocast(dev, prec):
            return model.encode_image(x.to(dev), proj_contrast=True, normalize=False)

    def probe_fn(x: torch.Tensor) -> torch.Tensor:
        with autocast(dev, prec):
            return model.encode_image(x.to(dev), proj_contrast=False, normalize=False)

    def text_fn(texts: Sequence[str]) -> torch.Tensor:
        with autocast(dev, prec):
            return model.encode_text(conch.tokenize(texts=list(texts), tokenizer=tokenizer).to(dev), normalize=False)

    enc = CallableEncoder(name or "conch", image_fn, preprocess, text_fn=text_fn, probe_fn=probe_fn)
    enc.model, enc.device, enc.precision = model, dev, prec
    return enc


# ------------------------------------------------------------------------ timm hub models
class ClsMeanPatch(torch.nn.Module):
    """Virchow's tile embedding: the CLS token concatenated with the mean of the patch tokens
    (register tokens skipped), from a timm model built with ``global_pool=""``."""

    def __init__(self, model: torch.nn.Module, num_prefix_tokens: int):
        super().__init__()
        self.model, self.num_prefix_tokens = model, num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model(x)
        return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens:].mean(1)], dim=-1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, D) as timm's ``forward_features`` (for per-patch tokens)."""
        return self.model.forward_features(x)


def _timm_model(what: str, hub_id: str, arch: str, weights: str | bool | None, arch_kwargs: dict,
                hub_kwargs: dict) -> torch.nn.Module:
    """The hub model (default), ``arch`` with a local weights file, or ``arch`` at random (False)."""
    timm = _need("timm", what, "pip install timm")
    if weights is False or weights == "random":
        return timm.create_model(arch, pretrained=False, **arch_kwargs)
    if isinstance(weights, str) and weights not in ("", "true"):
        if not weights.startswith(("hf_hub:", "hf-hub:")):
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": weights}, **arch_kwargs)
        hub_id = "hf-hub:" + weights.split(":", 1)[1]
    return timm.create_model(hub_id, pretrained=True, **hub_kwargs)


@register_encoder("uni", "UNI (MahmoodLab, ViT-L/16, 1024-d) through timm")
def uni_encoder(weights: str | bool | None = None, device: Any = None, precision: str | None = None,
                name: str | None = None) -> ModuleEncoder:
    """UNI: timm ViT-L/16 (layer scale 1e-5), pooled CLS; 224 px, bilinear resize, ImageNet mean/std."""
    kw = dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)
    m = _timm_model("uni", "hf-hub:MahmoodLab/uni", "vit_large_patch16_224", weights, kw, kw)
    return ModuleEncoder(m, PathologyTransform(224, 224), name=name or "uni", device=device, precision=precision)


def _virchow(what: str, hub_id: str, registers: int, weights: Any, device: Any, precision: Any,
             name: str | None) -> ModuleEncoder:
    timm = _need("timm", what, "pip install timm")
    kw = dict(img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375, global_pool="",
              dynamic_img_size=True, mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)
    if registers:
        kw["reg_tokens"] = registers
    m = _timm_model(what, hub_id, "vit_huge_patch14_224", weights, kw, kw)
    return ModuleEncoder(ClsMeanPatch(m, 1 + registers), PathologyTransform(224, 224, interpolation="bicubic"),
                         name=name or what, device=device, precision=precision)


@register_encoder("virchow", "Virchow (Paige, ViT-H/14): CLS + mean patch token, 2560-d, through timm")
def virchow_encoder(weights: str | bool | None = None, device: Any = None, precision: str | None = None,
                    name: str | None = None) -> ModuleEncoder:
    """Virchow: timm ViT-H/14 with SwiGLU; the embedding its model card defines (CLS ++ patch mean)."""
    return _virchow("virchow", "hf-hub:paige-ai/Virchow", 0, weights, device, precision, name)


@register_encoder("virchow2", "Virchow 2 (Paige, ViT-H/14, 4 registers): CLS + mean patch token, 2560-d")
def virchow2_encoder(weights: str | bool | None = None, device: Any = None, precision: str | None = None,
                     name: str | None = None) -> ModuleEncoder:
    """Virchow 2: as Virchow with 4 register tokens, which the patch mean skips."""
    return _virchow("virchow2", "hf-hub:paige-ai/Virchow2", 4, weights, device, precision, name)


@register_encoder("gigapath", "Prov-GigaPath tile encoder (ViT-g/14 at patch 16, 1536-d) through timm")
def gigapath_encoder(weights: str | bool | None = None, device: Any = None, precision: str | None = None,
                     name: str | None = None) -> ModuleEncoder:
    """Prov-GigaPath's tile encoder: pooled CLS; bicubic resize to 256, centre crop 224, ImageNet mean/std."""
    arch_kw = dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
                   mlp_ratio=5.33334, num_classes=0, dynamic_img_size=True)
    m = _timm_model("gigapath", "hf-hub:prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2", weights,
                    arch_kw, dict(img_size=224, dynamic_img_size=True))
    return ModuleEncoder(m, PathologyTransform(256, 224, interpolation="bicubic"), name=name or "gigapath",
                         device=device, precision=precision)
