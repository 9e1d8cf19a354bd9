"""Whole-slide multimodal pretraining in the manner of mSTAR (Xu et al., Nat. Commun. 2025).

Stage 1 (``pretrain_aggregator``): a slide aggregator aligned with reports and RNA-seq by tri-modal
CLIP losses over the pairs each patient has. Stage 2 (``self_taught``): MUSK's vision side trained
to reproduce the frozen aggregator's patch tokens, with an EMA teacher. Then zero/few-shot slide
classification, mSTAR+ initialisation of ``openmusk.mil`` models, and MCAT / PORPOISE survival.
"""
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig, SelfTaughtConfig, load_config
from openmusk.pretrain.mstar.downstream import few_shot_slides, init_mil_aggregator, zero_shot_slides
from openmusk.pretrain.mstar.genomic_survival import MCAT, PORPOISE, cross_validate_genomic, pathway_groups
from openmusk.pretrain.mstar.loss import TriModalClipLoss
from openmusk.pretrain.mstar.model import MstarModel, MstarPretrained, ReportEncoder, aggregator_tokens
from openmusk.pretrain.mstar.rna import RnaEncoder, RnaPreprocessor
from openmusk.pretrain.mstar.stage1 import cross_modal_retrieval, pretrain_aggregator
from openmusk.pretrain.mstar.stage2 import self_taught

__all__ = ["AggregatorPretrainConfig", "SelfTaughtConfig", "load_config", "pretrain_aggregator", "self_taught",
           "MstarModel", "MstarPretrained", "ReportEncoder", "aggregator_tokens", "TriModalClipLoss",
           "RnaPreprocessor", "RnaEncoder", "cross_modal_retrieval", "zero_shot_slides", "few_shot_slides",
           "init_mil_aggregator", "MCAT", "PORPOISE", "cross_validate_genomic", "pathway_groups"]
