"""The benchmark grid: models x datasets x tasks, one JSON result per cell.

Cells are written atomically to ``<output_dir>/<model>/<dataset>/<task>.json``; a rerun skips the
cells that exist, so an interrupted run resumes where it stopped. A cell that fails is reported
(``run_summary.json`` and stderr) and the grid carries on. Features are computed once per
(model, dataset, split, kind) and cached in HDF5 under ``cache_dir``.
"""
from __future__ import annotations

import copy
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from openmusk.core.io import safe_filename, write_json
from openmusk.core.runtime import resolve_device
from openmusk.encoders import FeatureSet, zero_shot_weights
from openmusk.eval import paper as P
from openmusk.eval import tasks as T
from openmusk.eval.config import DatasetEntry, EvalConfig
from openmusk.eval.features import cached_features, cached_text_features
from openmusk.eval.specs import DatasetSpec, build_dataset, get_dataset_spec

__all__ = ["run_eval", "cell_path"]


def cell_path(output_dir: str | Path, model: str, dataset: str, task: str) -> Path:
    """Where one cell's result lives."""
    return Path(output_dir) / safe_filename(model) / safe_filename(dataset) / f"{safe_filename(task)}.json"


class _Cell:
    """Everything one (model, dataset) pair needs, loaded lazily and shared by its tasks."""

    def __init__(self, cfg: EvalConfig, encoder, entry: DatasetEntry, spec: DatasetSpec):
        self.cfg, self.enc, self.entry, self.spec = cfg, encoder, entry, spec
        self.protocol = entry.protocol or cfg.protocol or spec.protocol
        self.root = entry.root if entry.root is not None else (
            str(Path(cfg.data_root) / spec.name) if cfg.data_root and spec.root is None else None)
        self._datasets: dict = {}
        self._features: dict = {}
        self.skipped: set[str] = set()

    def dataset(self, split: str | None):
        """The dataset of one split (None: the whole set), opened once."""
        if split not in self._datasets:
            self._datasets[split] = build_dataset(self.spec, self.root, split)
        return self._datasets[split]

    def features(self, split: str | None, kind: str) -> FeatureSet:
        """Features of one split (memoised; cached on disk); notes the unreadable images.

        ``kind`` ``probe_singlescale`` is the single-scale probe feature (the authors' k-shot
        runs, protocol 1.5), from a single-scale copy of a multiscale encoder, cached apart."""
        c = self.cfg
        if (split, kind) not in self._features:
            enc, enc_kind = self.enc, kind
            if kind == "probe_singlescale":
                enc_kind = "probe"
                if getattr(self.enc, "multiscale", False):
                    enc = copy.copy(self.enc)
                    enc.multiscale, enc.name = False, f"{self.enc.name}@singlescale"
            self._features[split, kind] = cached_features(
                enc, self.dataset(split), split, enc_kind, c.cache_dir,
                batch_size=c.batch_size, num_workers=c.num_workers)
        fs = self._features[split, kind]
        self.skipped.update(f"{split or 'all'}/{self.dataset(split).keys[i]}: {r}" for i, r in fs.failed)
        return fs

    def labelled(self, split: str | None, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one split; an unlabelled split is an error naming the dataset."""
        fs = self.features(split, kind)
        if fs.labels is None:
            raise ValueError(f"{self.spec.name} split {split!r} has no labels")
        return fs.features, fs.labels

    def has_split(self, split: str | None) -> bool:
        """Whether the spec defines this split (else tasks use the whole set)."""
        return split is not None and (split in self.spec.splits or bool(self.spec.split_column))


def _run_paper_task(task: str, cell: _Cell) -> dict:
    """One task under ``protocol: musk-paper`` (:mod:`openmusk.eval.paper`)."""
    cfg, e, spec = cell.cfg, cell.entry, cell.spec
    kw = {"n_resamples": cfg.n_resamples, "seed": cfg.seed}
    test = e.test_split if cell.has_split(e.test_split) else None
    if task == "zeroshot":
        x, y = cell.labelled(test, "embed")
        return P.paper_zero_shot(x, y, P.paper_class_weights(cell.enc, spec.classes, spec.templates), **kw)
    if task == "image_retrieval":
        splits = e.retrieval_splits or spec.retrieval_splits or [test]
        parts = [cell.labelled(s if cell.has_split(s) else None, "embed") for s in splits]
        result = P.paper_image_retrieval(np.concatenate([p[0] for p in parts]),
                                         np.concatenate([p[1] for p in parts]), **kw)
        result["details"]["splits"] = list(splits)
        return result
    if task == "linear_probe":
        xtr, ytr = cell.labelled(e.train_split, "probe")
        xte, yte = cell.labelled(e.test_split, "probe")
        return P.paper_linear_probe(xtr, ytr, xte, yte, seed=cfg.seed, n_resamples=cfg.n_resamples)
    if task == "few_shot":
        xtr, ytr = cell.labelled(e.train_split, "probe_singlescale")
        xte, yte = cell.labelled(e.test_split, "probe_singlescale")
        return P.paper_few_shot(xtr, ytr, xte, yte, shots=cfg.shots, seeds=range(cfg.few_shot_seeds))
    return _run_task(task, cell, protocol_checked=True)


def _run_task(task: str, cell: _Cell, protocol_checked: bool = False) -> dict:
    """Compute one task for one (model, dataset) cell, under the cell's protocol."""
    if cell.protocol == P.PAPER_PROTOCOL and not protocol_checked:
        return _run_paper_task(task, cell)
    cfg, e, spec = cell.cfg, cell.entry, cell.spec
    kw = {"n_resamples": cfg.n_resamples, "seed": cfg.seed}
    test = e.test_split if cell.has_split(e.test_split) else None
    if task == "zeroshot":
        x, y = cell.labelled(test, "embed")
        w = zero_shot_weights(cell.enc, spec.classes, spec.templates)
        return T.zero_shot_classification(x, y, w, **kw)
    if task == "retrieval":
        ds = cell.dataset(test)
        if ds.captions is None:
            raise ValueError(f"{spec.name}: retrieval needs captions (caption_column)")
        fs = cell.features(test, "embed")
        keys = [ds.keys[i] for i in fs.index]
        first: dict[str, int] = {}
        for row, k in enumerate(keys):
            first.setdefault(k, row)
        img_rows = sorted(first.values())
        img_of = {keys[r]: j for j, r in enumerate(img_rows)}
        texts = [ds.captions[i] for i in fs.index]
        txt = (P.paper_text_embeddings(cell.enc, texts) if cell.protocol == P.PAPER_PROTOCOL
               else cached_text_features(cell.enc, texts, spec.name, test, cfg.cache_dir))
        return T.cross_modal_retrieval(fs.features[img_rows], txt, [img_of[k] for k in keys],
                                       ks=cfg.retrieval_ks, **kw)
    if task == "image_retrieval":
        splits = e.retrieval_splits or [test]
        parts = [cell.labelled(s, "embed") for s in splits]
        return T.image_retrieval(np.concatenate([p[0] for p in parts]),
                                 np.concatenate([p[1] for p in parts]), ks=cfg.image_retrieval_ks, **kw)
    xtr, ytr = cell.labelled(e.train_split, "probe")
    xte, yte = cell.labelled(e.test_split, "probe")
    if task == "linear_probe":
        val = cell.labelled(e.val_split, "probe") if e.val_split else (None, None)
        return T.linear_probe(xtr, ytr, xte, yte, val_x=val[0], val_y=val[1], **kw)
    if task == "few_shot":
        return T.few_shot(xtr, ytr, xte, yte, shots=cfg.shots, seeds=range(cfg.few_shot_seeds),
                          C=cfg.few_shot_C)
    if task == "knn":
        return T.knn_probe(xtr, ytr, xte, yte, k=cfg.knn_k, **kw)
    raise ValueError(f"unknown task {task!r}")


def run_eval(cfg: EvalConfig, progress: bool = True) -> dict:
    """Run every missing cell of the grid; returns lists of cells done, skipped (finished
    before), not applicable (text tasks for image-only encoders) and failed (with the error)."""
    out = Path(cfg.output_dir)
    summary: dict[str, list] = {"done": [], "skipped": [], "not_applicable": [], "failed": []}
    specs = [(d, get_dataset_spec(d.spec)) for d in cfg.datasets]
    for d, s in specs:
        if d.root is None and s.root is None and cfg.data_root is None:
            raise ValueError(f"dataset {d.spec!r}: give root: (the folder its files are in) or data_root:")
    device = resolve_device(cfg.device)
    for m in cfg.models:
        todo = [(d, s, t) for d, s in specs for t in (d.tasks or s.tasks)
                if not cell_path(out, m.name, s.name, t).is_file()]
        summary["skipped"] += [str(cell_path(out, m.name, s.name, t)) for d, s in specs
                               for t in (d.tasks or s.tasks)
                               if cell_path(out, m.name, s.name, t).is_file()]
        if not todo:
            continue
        try:
            encoder = m.build(device, cfg.precision)
        except Exception as exc:  # e.g. weights not available offline: report, go on with others
            msg = f"cannot build model {m.name!r}: {type(exc).__name__}: {exc}"
            print(f"FAILED {msg}", file=sys.stderr)
            summary["failed"] += [{"cell": str(cell_path(out, m.name, s.name, t)), "error": msg}
                                  for _, s, t in todo]
            continue
        cells: dict[str, _Cell] = {}
        for d, spec, task in todo:
            cell = cells.setdefault(spec.name, _Cell(cfg, encoder, d, spec))
            path = cell_path(out, m.name, spec.name, task)
            if task in ("zeroshot", "retrieval") and not encoder.has_text:
                summary["not_applicable"].append({"cell": str(path),
                                                  "reason": f"{m.name} has no text tower"})
                continue
            t0 = time.time()
            cell.skipped = set()
            try:
                result = _run_task(task, cell)
            except Exception as exc:  # one broken cell must not stop the grid
                msg = f"{type(exc).__name__}: {exc}"
                print(f"FAILED {m.name} / {spec.name} / {task}: {msg}", file=sys.stderr)
                summary["failed"].append({"cell": str(path), "error": msg,
                                          "traceback": traceback.format_exc(limit=3)})
                continue
            result.setdefault("details", {})["protocol"] = cell.protocol
            result.update({"model": m.name, "dataset": spec.name, "seconds": round(time.time() - t0, 3),
                           "skipped_items": sorted(cell.skipped)})
            write_json(path, result)
            summary["done"].append(str(path))
            if progress:
                main = next(iter(result["metrics"].items()))
                print(f"{m.name:>16} {spec.name:>14} {task:>15}  {main[0]} = {main[1]['value']:.4f}",
                      file=sys.stderr)
    write_json(out / "run_summary.json", summary)
    return summary

