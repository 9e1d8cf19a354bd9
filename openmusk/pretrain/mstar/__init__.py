"""Whole-slide multimodal pretraining in the manner of mSTAR (Xu et al., Nat. Commun. 2025).

Stage 1 (``pretrain_aggregator``): a slide aggregator from :mod:`openmusk.mil` aligned with reports
and RNA-seq by tri-modal CLIP losses over the pairs each patient has. Stage 2 (``self_taught``):
MUSK's vision side trained to reproduce the frozen aggregator's patch tokens, with an EMA teacher.
Then zero/few-shot slide classification (by the aggregator embedding, or from tiles as MI-Zero:
top-j pooling of tile-prompt scores, text-guided prototypes) and mSTAR+ initialisation of ``openmusk.mil`` models.
Cohorts, bags, the optimiser step and resume files are mil's; MCAT / PORPOISE genomic survival
models live in :mod:`openmusk.mil.genomic` (MOTCat / CMTA in :mod:`openmusk.mil.genomic_models`), report
generation in :mod:`openmusk.mil.report_gen`.
"""
from openmusk.pretrain.mstar.config import AggregatorPretrainConfig, SelfTaughtConfig, SlidePromptConfig
from openmusk.pretrain.mstar.downstream import few_shot_slides, init_mil_aggregator, zero_shot_slides
from openmusk.pretrain.mstar.loss import TriModalClipLoss
from openmusk.pretrain.mstar.model import MstarModel, MstarPretrained, ReportEncoder, aggregator_tokens
from openmusk.pretrain.mstar.rna import RnaEncoder, RnaPreprocessor
from openmusk.pretrain.mstar.slide_prompts import (few_shot_text_prototypes, read_prompts, run_few_shot, run_zero_shot,
                                                   zero_shot_topj)
from openmusk.pretrain.mstar.stage1 import pretrain_aggregator, retrieval_between_modalities
from openmusk.pretrain.mstar.stage2 import self_taught

__all__ = ["AggregatorPretrainConfig", "SelfTaughtConfig", "pretrain_aggregator", "self_taught",
           "MstarModel", "MstarPretrained", "ReportEncoder", "aggregator_tokens", "TriModalClipLoss",
           "RnaPreprocessor", "RnaEncoder", "retrieval_between_modalities", "zero_shot_slides",
           "few_shot_slides", "init_mil_aggregator", "SlidePromptConfig", "read_prompts", "zero_shot_topj",
           "few_shot_text_prototypes", "run_zero_shot", "run_few_shot"]
