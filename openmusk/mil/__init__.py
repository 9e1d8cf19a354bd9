"""Slide-level outcome prediction from MUSK features and reports: MIL models, survival losses,
cross-validation, statistics and attention maps (the part of MUSK the authors did not release).

>>> from openmusk.mil import load_config, train
>>> metrics = train(load_config("cohort.yaml"))     # 5-fold CV, results folder, plots
>>> from openmusk.mil.models import ABMIL            # aggregators for other code (e.g. mSTAR)
"""
from openmusk.mil.api import build_model, predict, report_embeddings, train
from openmusk.mil.config import MilConfig, load_config
from openmusk.mil.models import ABMIL, MeanPool, MilModel, TransMIL, load_aggregator, save_aggregator
from openmusk.mil.tasks import ClassificationTask, SurvivalTask
from openmusk.mil.trainer import TrainConfig, evaluate, fit
from openmusk.mil.cv import cross_validate

__all__ = ["train", "predict", "build_model", "report_embeddings", "MilConfig", "load_config", "ABMIL",
           "TransMIL", "MeanPool", "MilModel", "load_aggregator", "save_aggregator",
           "ClassificationTask", "SurvivalTask", "TrainConfig", "fit", "evaluate", "cross_validate"]
