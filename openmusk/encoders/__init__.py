"""Any patch encoder by name: MUSK (multiscale and single-scale), open_clip, timm, Hugging Face
transformers, the pathology models the paper compared (plip, biomedclip, conch, uni, virchow,
virchow2, gigapath), baselines, or a user's ``module:function``; with embedding and zero-shot helpers.

>>> from openmusk.encoders import load_encoder
>>> enc = load_encoder("musk", weights="hf_hub:xiangjx/musk")      # or "random:musk_tiny_patch16_32"
>>> enc.encode_image(enc.transform(img)[None], kind="probe").shape  # (1, 2048)
"""
from openmusk.encoders import adapters, baselines, musk, pathology  # noqa: F401 - register the built-in encoders
from openmusk.encoders.adapters import OpenClipEncoder, hf_encoder, open_clip_encoder, timm_encoder
from openmusk.encoders.base import (ENCODERS, FEATURE_KINDS, CallableEncoder, Encoder, ModuleEncoder,
                                    encoder_info, list_encoders, load_encoder, register_encoder)
from openmusk.encoders.baselines import color_stats_encoder
from openmusk.encoders.embed import FeatureSet, encode_dataset, encode_texts, zero_shot_weights
from openmusk.encoders.files import embed_images, embed_texts, zero_shot_image
from openmusk.encoders.musk import MuskEncoder, MuskUint8Transform, musk_encoder, normalize_uint8

__all__ = ["Encoder", "FEATURE_KINDS", "ENCODERS", "register_encoder", "load_encoder", "list_encoders",
           "encoder_info", "CallableEncoder", "ModuleEncoder", "MuskEncoder", "MuskUint8Transform",
           "OpenClipEncoder", "musk_encoder", "open_clip_encoder", "timm_encoder", "hf_encoder",
           "color_stats_encoder", "normalize_uint8", "FeatureSet", "encode_dataset", "encode_texts",
           "zero_shot_weights", "embed_images", "embed_texts", "zero_shot_image"]
