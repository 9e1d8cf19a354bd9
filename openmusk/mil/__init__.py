"""Slide-level models and outcome prediction from slide features and reports: MIL aggregators
(ABMIL, TransMIL, mean pooling), genomic survival models (MCAT, PORPOISE), survival losses,
cross-validation, statistics and attention maps (the part of MUSK the authors did not release).

>>> from openmusk.core.config import load_config
>>> from openmusk.mil import MilConfig, train
>>> metrics = train(load_config(MilConfig, "cohort.yaml"))   # 5-fold CV, results folder, plots
>>> from openmusk.mil.models import ABMIL                     # aggregators for other code (e.g. mSTAR)
>>> ablate(config); compare_runs("runs/musk", "runs/other")  # modality ablation, paired model comparison
"""
from openmusk.mil.ablate import ablate
from openmusk.mil.api import build_model, embed_patient_reports, predict, summarize_cohort, train
from openmusk.mil.compare import compare_runs
from openmusk.mil.cohort import BagDataset, PatientRecord, attach_features, read_bag, read_cohort
from openmusk.mil.config import MilConfig
from openmusk.mil.cv import cross_validate
from openmusk.mil.genomic import MCAT, PORPOISE, cross_validate_genomic, pathway_groups
from openmusk.mil.models import ABMIL, MeanPool, MilModel, TransMIL, load_aggregator, save_aggregator
from openmusk.mil.tasks import ClassificationTask, SurvivalTask
from openmusk.mil.trainer import FitConfig, Optimization, evaluate, fit

__all__ = ["train", "predict", "ablate", "compare_runs", "summarize_cohort", "build_model", "embed_patient_reports", "MilConfig", "PatientRecord",
           "read_cohort", "attach_features", "read_bag", "BagDataset", "ABMIL", "TransMIL", "MeanPool",
           "MilModel", "load_aggregator", "save_aggregator", "MCAT", "PORPOISE", "cross_validate_genomic",
           "pathway_groups", "ClassificationTask", "SurvivalTask", "FitConfig", "Optimization", "fit",
           "evaluate", "cross_validate"]
