"""Patch-level benchmarks: zero-shot classification, cross-modal and image retrieval, linear,
few-shot and kNN probes, with bootstrap confidence intervals, model comparisons and reports, under
the MUSK authors' protocol (``musk-paper``) or CLIP_benchmark's, on the datasets as published.

>>> from openmusk.eval import load_eval_config, run_eval, write_report
>>> run_eval(load_eval_config("bench.yaml")); write_report("eval_results")

Names load on first use, so importing this package stays light; ``openmusk.eval.vqa`` is a
separate subpackage and is never imported from here.
"""
from __future__ import annotations

from openmusk.core.lazy import lazy_exports

_LAZY = {
    "DatasetSpec": "openmusk.eval.specs", "get_dataset_spec": "openmusk.eval.specs",
    "list_dataset_specs": "openmusk.eval.specs", "load_dataset_spec": "openmusk.eval.specs",
    "build_dataset": "openmusk.eval.specs",
    "cached_features": "openmusk.eval.features", "zero_shot_classification": "openmusk.eval.tasks",
    "cross_modal_retrieval": "openmusk.eval.tasks", "image_retrieval": "openmusk.eval.tasks",
    "linear_probe": "openmusk.eval.tasks", "few_shot": "openmusk.eval.tasks",
    "knn_probe": "openmusk.eval.tasks",
    "compare_results": "openmusk.eval.compare",
    "EvalConfig": "openmusk.eval.config", "ModelEntry": "openmusk.eval.config",
    "DatasetEntry": "openmusk.eval.config", "load_eval_config": "openmusk.eval.config",
    "run_eval": "openmusk.eval.runner", "paper_grid_config": "openmusk.eval.config",
    "READERS": "openmusk.eval.datasets", "PROTOCOLS": "openmusk.eval.specs",
    "load_results": "openmusk.eval.report", "write_report": "openmusk.eval.report",
    "format_table": "openmusk.eval.report", "results_rows": "openmusk.eval.report",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
