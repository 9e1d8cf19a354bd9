"""MUSK pretraining: VQ-KD tokenizer, unified masked modelling (stage 1), contrastive alignment
(stage 2), bootstrapped filtering and the shard tools they read.

Names load on first use, so ``import openmusk.pretrain`` stays light (and never imports mSTAR).
"""
from __future__ import annotations

from openmusk.core.lazy import lazy_exports

_LAZY = {
    "TokenizerStageConfig": "openmusk.pretrain.config",
    "MaskedStageConfig": "openmusk.pretrain.config",
    "ContrastiveStageConfig": "openmusk.pretrain.config",
    "FilterConfig": "openmusk.pretrain.config",
    "ShardsConfig": "openmusk.pretrain.config",
    "DataConfig": "openmusk.pretrain.config",
    "TrainConfig": "openmusk.pretrain.trainer",
    "Trainer": "openmusk.pretrain.trainer",
    "VQKD": "openmusk.pretrain.vqkd",
    "VQKDConfig": "openmusk.pretrain.vqkd",
    "vqkd_config": "openmusk.pretrain.vqkd",
    "PRESETS": "openmusk.pretrain.presets",
    "preset_config": "openmusk.pretrain.presets",
    "text_windows": "openmusk.pretrain.data",
    "load_tokenizer": "openmusk.pretrain.vqkd",
    "save_tokenizer": "openmusk.pretrain.vqkd",
    "MaskedModelling": "openmusk.pretrain.masked",
    "ContrastiveAlignment": "openmusk.pretrain.contrastive",
    "clip_loss": "openmusk.pretrain.contrastive",
    "ShardStream": "openmusk.pretrain.stream",
    "make_shards": "openmusk.pretrain.data",
    "train_tokenizer": "openmusk.pretrain.stages",
    "train_masked": "openmusk.pretrain.stages",
    "train_contrastive": "openmusk.pretrain.stages",
    "filter_pairs": "openmusk.pretrain.stages",
    "score_pairs": "openmusk.pretrain.stages",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
