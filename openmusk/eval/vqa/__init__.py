"""Visual question answering with MUSK (PathVQA): data, answer normalisation, BEiT-3-style model,
fine-tuning, evaluation with bootstrap CIs and run comparison.

>>> from openmusk.eval.vqa import VQAPredictor
>>> vqa = VQAPredictor.from_pretrained("runs/vqa")
>>> vqa.ask("tile.png", "is there tissue in this image?")
"""
from openmusk.eval.vqa.answers import AnswerVocab, is_closed, normalize_answer
from openmusk.eval.vqa.data import (VQACollate, VQAData, VQADataset, open_vqa, read_pathvqa_parquet,
                                    read_vqa_table)
from openmusk.eval.vqa.evaluate import (accuracy_report, compare_predictions, exact_match,
                                        read_predictions, vqa_accuracy, write_predictions)
from openmusk.eval.vqa.model import MuskVQA, VQAPooler, set_trainable
from openmusk.eval.vqa.plots import plot_accuracies, plot_history
from openmusk.eval.vqa.predictor import VQAPredictor, load_vqa, save_vqa
from openmusk.eval.vqa.train import VQATrainConfig, build_vqa_model, build_vqa_optimizer, train_vqa

__all__ = ["AnswerVocab", "is_closed", "normalize_answer", "VQACollate", "VQAData", "VQADataset",
           "open_vqa", "read_pathvqa_parquet", "read_vqa_table", "accuracy_report",
           "compare_predictions", "exact_match", "read_predictions", "vqa_accuracy",
           "write_predictions", "MuskVQA", "VQAPooler", "set_trainable", "VQAPredictor", "load_vqa",
           "save_vqa", "plot_accuracies", "plot_history", "VQATrainConfig", "build_vqa_model", "build_vqa_optimizer", "train_vqa"]
