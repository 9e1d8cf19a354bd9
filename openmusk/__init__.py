"""openmusk: MUSK, the vision-language foundation model for pathology, open and complete.

>>> import openmusk
>>> model = openmusk.create_model(pretrained="hf_hub:xiangjx/musk")
>>> tokenizer, transform = openmusk.get_tokenizer(), openmusk.get_transform()

open_clip's habits work too: ``model, _, preprocess = openmusk.create_model_and_transforms(
"hf-hub:xiangjx/musk")``, ``tokenizer = openmusk.get_tokenizer("musk_large_patch16_384")``,
``model.encode_text(tokenizer(texts))``, ``openmusk.list_models()``, ``openmusk.list_pretrained()``.

Every public name loads when first used (PEP 562), so ``import openmusk`` stays light and does
not import torch.
"""
from __future__ import annotations

import importlib
import sys

from .core import __version__
from .core.lazy import lazy_exports

# public name -> module that defines it, imported on first access (PEP 562); even the model API
# waits, so that `openmusk --help` answers without importing torch
_MODEL_NAMES = ("CONFIGS", "DEFAULT_WEIGHTS", "CheckpointMismatchError", "Musk", "MuskConfig",
                "WeightsNotFoundError", "config_from_checkpoint", "create_model", "get_config",
                "list_configs", "load_checkpoint", "resolve_weights", "save_checkpoint", "weights_available")
_LAZY = {
    **dict.fromkeys(_MODEL_NAMES, "openmusk.model"),
    "get_tokenizer": "openmusk.text.tokenizer",
    "TokenBatch": "openmusk.text.tokenizer",
    "create_model_and_transforms": "openmusk.model.factory",
    "create_model_from_pretrained": "openmusk.model.factory",
    "list_models": "openmusk.model.factory",
    "list_pretrained": "openmusk.model.factory",
    "MuskTokenizer": "openmusk.text.tokenizer",
    "get_transform": "openmusk.data.transforms",
    "MuskTransform": "openmusk.data.transforms",
    "register_timm": "openmusk.model.timm_registry",
    # any patch encoder by name, configs, report text
    "load_encoder": "openmusk.encoders.base",
    "list_encoders": "openmusk.encoders.base",
    "register_encoder": "openmusk.encoders.base",
    "load_config": "openmusk.core.config",
    "report_embeddings": "openmusk.text.report",
    "embed_reports": "openmusk.text.report",
    "read_features": "openmusk.data.features_h5",
    "read_slide_features": "openmusk.data.features_h5",
    # whole slides
    "open_slide": "openmusk.slide.reader",
    "Slide": "openmusk.slide.reader",
    "segment_tissue": "openmusk.slide.tissue",
    "ExtractConfig": "openmusk.slide.config",
    "extract_features": "openmusk.slide.pipeline",
    "draw_heatmap": "openmusk.slide.heatmap",
    "heatmap_from_features": "openmusk.slide.heatmap",
    "run_demo": "openmusk.slide.demo",
    # slide-level outcome models
    "MilConfig": "openmusk.mil.config",
    "ABMIL": "openmusk.mil.models",
    "TransMIL": "openmusk.mil.models",
    # visual question answering
    "VQAPredictor": "openmusk.eval.vqa",
    "VQATrainConfig": "openmusk.eval.vqa",
    "train_vqa": "openmusk.eval.vqa",
    # whole-slide multimodal pretraining (mSTAR)
    "pretrain_aggregator": "openmusk.pretrain.mstar",
    "self_taught": "openmusk.pretrain.mstar",
    "MstarPretrained": "openmusk.pretrain.mstar",
}
# task packages, imported on first access: openmusk.eval, openmusk.mil, openmusk.pretrain ...
_SUBPACKAGES = ("core", "model", "encoders", "eval", "slide", "mil", "pretrain", "text", "data")

__all__ = [*_LAZY]


if "timm" in sys.modules:  # timm already imported by the user: make our names creatable there
    importlib.import_module("openmusk.model.timm_registry").register_timm()


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), _SUBPACKAGES)
