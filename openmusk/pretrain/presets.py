"""Named recipes for the pretraining commands: the authors' released settings and the paper's.

``--preset NAME`` starts a stage's config from one of these (a config file and ``--set`` then
override it). Every value names its source: ``code`` is the authors' pretraining code at tag
v1.0.0 of lilab-stanford/MUSK (S1 = pretrain/1_mask_pretrain, S2 = pretrain/2_contrastive_pretrain),
``paper`` the MUSK paper's methods (Xiang et al., Nature 2025). Where the two disagree the plain
preset follows the code (it made the released weights) and the ``-paper`` preset the paper.
Step counts: our trainer counts optimiser steps; epochs of the code are turned into steps with
the corpus sizes the paper reports, so set ``train.total_steps`` for your own corpus.

``musk_stain_statistics.json`` is the authors' RandStainNA template (S1/datasets/stain_params.yaml,
OpenCV 8-bit LAB) in CIE LAB: L x 100/255, a and b - 128; their RandStainNA draws from a normal
with the template's std x (1 + std_hyper) = 0.7 (S1/datasets/musk_datasets.py:73-78).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Preset", "PRESETS", "preset_config", "preset_yaml", "STAIN_STATISTICS"]

STAIN_STATISTICS = str(Path(__file__).with_name("musk_stain_statistics.json"))


@dataclass(frozen=True)
class Preset:
    """A named recipe: the stage it configures, its values (dotted keys) and each value's source."""

    stage: str
    values: dict[str, tuple[Any, str]]

    def overrides(self) -> dict[str, Any]:
        """The dotted-key values alone."""
        return {k: v for k, (v, _) in self.values.items()}


_CODE_AUGMENT = {   # S1/datasets/musk_datasets.py:71-81: jitter, RandStainNA, horizontal flip, crop
    "data.augment.p_jitter": (1.0, "code: ColorJitter(0.2, 0.2, 0.2) on every image (musk_datasets.py:72)"),
    "data.augment.brightness": (0.2, "code: musk_datasets.py:72"),
    "data.augment.contrast": (0.2, "code: musk_datasets.py:72"),
    "data.augment.saturation": (0.2, "code: musk_datasets.py:72"),
    "data.augment.hue": (0.0, "code: no hue jitter (musk_datasets.py:72)"),
    "data.augment.p_stain": (1.0, "code: RandStainNA probability 1.0 (musk_datasets.py:77)"),
    "data.augment.stain_statistics": (STAIN_STATISTICS, "code: datasets/stain_params.yaml, in CIE LAB"),
    "data.augment.stain_std_scale": (0.7, "code: std_hyper -0.3 (musk_datasets.py:75)"),
    "data.augment.p_hflip": (0.5, "code: RandomHorizontalFlip(0.5) (musk_datasets.py:80)"),
    "data.augment.p_vflip": (0.0, "code: no vertical flip"),
    "data.augment.p_grayscale": (0.0, "code: no greyscale"),
}
_PAPER_AUGMENT = {
    "data.augment.p_vflip": (0.5, "paper: vertical flip 0.5"),
    "data.augment.p_grayscale": (0.2, "paper: greyscale 0.2"),
    "data.augment.p_jitter": (0.8, "paper: weak colour jitter 0.8"),
    "data.augment.p_stain": (0.5, "paper: RandStainNA (probability not stated)"),
    "data.augment.stain_statistics": (STAIN_STATISTICS, "code: datasets/stain_params.yaml, in CIE LAB"),
}

_STAGE1 = {
    "model": ("musk_large_patch16_384", "code: pretrain_musk_large.yaml model.name"),
    "drop_path_rate": (0.1, "code: yaml drop_path 0.1; paper 0.1"),
    "mask_ratio": (0.4, "code: 230 of 576 patches (yaml num_mask_patches 230 = round(0.4 x 576))"),
    "min_mask_block": (16, "code: yaml min_mask_patches_per_block"),
    "max_mask_block": (100, "code: yaml max_mask_patches_per_block"),
    "text_mask_ratio": (0.15, "code: multimodal_dataset.py:121; paper 15%"),
    "whole_word_mask": ("authors", "code: whole_word_mask (multimodal_dataset.py:19-61)"),
    "mlm_targets": ("mask", "code: modeling_musk.py:155-157"),
    "data.max_text_len": (100, "code: yaml max_text_len"),
    "data.global_batch": (2048, "paper: 2048 images + 2048 texts (code: 32 per GPU, yaml batch_size)"),
    "train.total_steps": (1_000_000, "paper: 1M steps (code: 100 epochs, yaml epochs)"),
    "train.warmup_steps": (10_000, "paper: 10k warm-up steps (code: 1 epoch, yaml warmup_epochs)"),
    "train.lr": (1e-4, "code: yaml lr 1e-4 (paper: 1.5e-3)"),
    "train.warmup_lr_ratio": (0.01, "code: yaml warmup_lr 1e-6 / lr"),
    "train.min_lr_ratio": (0.1, "code: yaml min_lr 1e-5 / lr"),
    "train.betas": ((0.9, 0.999), "code: yaml opt_betas (paper: 0.9, 0.95)"),
    "train.eps": (1e-8, "code: yaml opt_eps; paper 1e-8"),
    "train.weight_decay": (0.05, "code: yaml weight_decay; paper 0.05"),
    "train.clip_grad": (1.0, "code: yaml clip_grad 1.0"),
    "train.precision": ("bf16", "code: run_pretrain.sh --mixed_precision bf16"),
    **_CODE_AUGMENT,
}
_STAGE1_PAPER = {
    **_STAGE1,
    "train.lr": (1.5e-3, "paper: peak lr 1.5e-3"),
    "train.betas": ((0.9, 0.95), "paper: AdamW (0.9, 0.95)"),
    "train.warmup_lr_ratio": (0.0, "paper: linear warm-up"),
    "train.min_lr_ratio": (0.0, "paper: cosine"),
    "whole_word_mask": ("none", "paper: 15% of text tokens"),
    "mlm_targets": ("selected", "paper: masked language modelling (BERT's 80/10/10 targets)"),
    **_PAPER_AUGMENT,
}
# Stage 2 runs 20 epochs over the pairs; the paper trains on 1M image-text pairs (steps = 20 x 1M / 3072).
_STAGE2 = {
    "model": ("musk_large_patch16_384", "code: train.sh --model"),
    "drop_path_rate": (0.2, "code: train.sh --drop_path 0.2 (paper: 0.1)"),
    "decoder_depth": (4, "code: modeling_finetune.py:77"),
    "decoder_heads": (16, "code: modeling_finetune.py:78"),
    "mlm_weight": (0.1, "code: engine_for_finetuning.py:145"),
    "text_mask_ratio": (0.15, "code: train.sh --text_mask_prob 0.15 (paper: 30%)"),
    "clip_text": ("masked", "code: the CLIP text pass reads the masked caption (datasets.py:134-139)"),
    "max_logit_scale": (None, "code: no clamp in stage 2"),
    "trim_caption": (True, "code: tokens[1:-1] (datasets.py:84)"),
    "data.max_text_len": (64, "code: run.py --num_max_bpe_tokens default 64"),
    "data.global_batch": (3072, "paper: batch 3072 (code: train.sh 4 per GPU)"),
    "train.total_steps": (6510, "paper + code: 20 epochs of 1M pairs at 3072"),
    "train.warmup_steps": (651, "paper + code: 2 warm-up epochs (train.sh --warmup_epochs 2)"),
    "train.lr": (1e-4, "code: train.sh --lr 1e-4; paper 1e-4"),
    "train.warmup_lr_ratio": (0.01, "code: run.py warmup_lr 1e-6 / lr"),
    "train.min_lr_ratio": (0.01, "code: run.py min_lr 1e-6 / lr"),
    "train.betas": ((0.9, 0.95), "code: train.sh --opt_betas 0.9 0.95"),
    "train.weight_decay": (0.05, "code: train.sh --weight_decay; paper 0.05"),
    "train.layer_decay": (0.85, "code: train.sh --layer_decay 0.85"),
    "train.clip_grad": (None, "code: run.py clip_grad None"),
    "train.grad_checkpointing": (True, "code: train.sh --checkpoint_activations"),
    "train.precision": ("bf16", "code: DeepSpeed mixed precision"),
}
_STAGE2_PAPER = {
    **_STAGE2,
    "drop_path_rate": (0.1, "paper: drop-path 0.1"),
    "text_mask_ratio": (0.3, "paper: 30% of text tokens masked"),
    "clip_text": ("clean", "paper: CLIP on the caption, the decoder on its masked copy"),
    "trim_caption": (False, "paper: whole captions"),
}
_TOKENIZER = {
    "tokenizer.img_size": (384, "code: yaml second_input_size 384"),
    "tokenizer.patch_size": (16, "code: vqkd_encoder_base_decoder_3x768x12 (modeling_vqkd.py)"),
    "tokenizer.embed_dim": (768, "code: ViT-B encoder, 768 wide (modeling_vqkd.py)"),
    "tokenizer.depth": (12, "code: 12 encoder layers"),
    "tokenizer.num_heads": (12, "code: 12 heads"),
    "tokenizer.decoder_depth": (3, "code: decoder 3 x 768 x 12"),
    "tokenizer.codebook_size": (8192, "code: yaml codebook_size"),
    "tokenizer.codebook_dim": (32, "code: yaml codebook_dim"),
    "tokenizer.decay": (0.99, "code: NormEMAVectorQuantizer decay 0.99"),
    "train.precision": ("bf16", "code: the tokenizer runs in bf16 (run_pretraining.py:125)"),
}

PRESETS: dict[str, Preset] = {
    "musk-large-tokenizer": Preset("tokenizer", _TOKENIZER),
    "musk-large-stage1": Preset("masked", _STAGE1),
    "musk-large-stage1-paper": Preset("masked", _STAGE1_PAPER),
    "musk-large-stage2": Preset("contrastive", _STAGE2),
    "musk-large-stage2-paper": Preset("contrastive", _STAGE2_PAPER),
}


def _get(name: str, stage: str | None) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if stage is not None and preset.stage != stage:
        raise ValueError(f"preset {name!r} configures `pretrain {preset.stage}`, not `pretrain {stage}`")
    return preset


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_config(cls: type, name: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  stage: str | None = None) -> Any:
    """``cls`` from preset ``name``, then the YAML/JSON file ``path`` (relative paths against its
    folder), then dotted ``overrides`` (None values ignored): later sources win."""
    from openmusk.core.config import config_from_dict, read_mapping, replace_config
    preset = _get(name, stage)
    data = _nest(preset.overrides())
    if path is not None:
        data = _merge(data, read_mapping(path))
    cfg = config_from_dict(cls, data, where=f"preset {name}" + (f" + {path}" if path else ""),
                           base_dir=Path(path).resolve().parent if path is not None else None)
    return replace_config(cfg, {k: v for k, v in (overrides or {}).items() if v is not None})


def preset_yaml(cls: type, name: str) -> str:
    """The full config of a preset as YAML (loadable as a config file), each preset value
    followed by its source as a comment."""
    import yaml

    from openmusk.core.config import config_to_dict
    preset = _get(name, None)
    lines = [f"# preset {name}: `openmusk pretrain {preset.stage}`; the source of each preset value follows it"]

    def walk(d: dict, prefix: str, indent: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                lines.append(f"{indent}{k}:")
                walk(v, key + ".", indent + "  ")
                continue
            text = yaml.safe_dump(v, default_flow_style=True, width=1000).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            note = preset.values.get(key, (None, ""))[1]
            lines.append(f"{indent}{k}: {text}" + (f"   # {note}" if note else ""))

    walk(config_to_dict(preset_config(cls, name)), "", "")
    return "\n".join(lines) + "\n"
