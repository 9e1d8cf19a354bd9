"""Whole-slide multimodal pretraining in the manner of mSTAR (Xu et al., Nat. Commun. 2025).

Stage 1 (``pretrain_aggregator``): a slide aggregator from :mod:`openmusk.mil` aligned with reports
and RNA-seq by tri-modal CLIP losses over the pairs each patient has. Stage 2 (``self_taught``):
MUSK's vision side trained to reproduce the frozen aggregator's patch tokens, with an EMA teacher.
Then zero/few-shot slide classification and mSTAR+ initialisation of ``openmusk.mil`` models.
Cohorts, bags, the optimiser step and resume files are mil's; MCAT / PORPOISE genomic survival
models live in :mod:`openmusk.mil.genomic`.
"""
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig, SelfTaughtConfig
from openmusk.pretrain.mstar.downstream import few_shot_slides, init_mil_aggregator, zero_shot_slides
from openmusk.pretrain.mstar.loss import TriModalClipLoss
from openmusk.pretrain.mstar.model import MstarModel, MstarPretrained, ReportEncoder, aggregator_tokens
from openmusk.pretrain.mstar.rna import RnaEncoder, RnaPreprocessor
from openmusk.pretrain.mstar.stage1 import pretrain_aggregator, retrieval_between_modalities
from openmusk.pretrain.mstar.stage2 import self_taught

__all__ = ["AggregatorPretrainConfig", "SelfTaughtConfig", "pretrain_aggregator", "self_taught",
           "MstarModel", "MstarPretrained", "ReportEncoder", "aggregator_tokens", "TriModalClipLoss",
           "RnaPreprocessor", "RnaEncoder", "retrieval_between_modalities", "zero_shot_slides",
           "few_shot_slides", "init_mil_aggregator"]
