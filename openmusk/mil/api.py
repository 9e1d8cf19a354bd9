"""The slide-level workflow in two calls: ``train(config)`` (cross-validation with every output)
and ``predict(results_dir, cohort, features_dir)`` (the fold models as an ensemble on new patients).

>>> from openmusk.core.config import load_config
>>> from openmusk.mil import MilConfig, train
>>> results = train(load_config(MilConfig, "her2.yaml"))
>>> results["summary"]["mean"]        # mean AUC over folds with 95% CI
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from openmusk.core.io import atomic_path, read_json, write_json
from openmusk.mil.cohort import BagDataset, PatientRecord, attach_features, read_cohort
from openmusk.mil.config import MilConfig
from openmusk.mil.losses import assign_bins, time_bins
from openmusk.mil.models import MilModel, build_aggregator, load_aggregator
from openmusk.mil.tasks import ClassificationTask, SurvivalTask, task_from_dict
from openmusk.mil.trainer import FitConfig

__all__ = ["train", "predict", "build_model", "embed_patient_reports"]


def build_model(config: MilConfig, task, in_dim: int, report_dim: int,
                log: Callable[[str], None] | None = None) -> MilModel:
    """The configured MilModel; loads ``config.init_aggregator`` into the aggregator if set."""
    aggregator = None
    if config.modality != "text":
        aggregator = build_aggregator(config.model, in_dim, config.hidden_dim, config.attention_dim,
                                      config.dropout)
        if config.init_aggregator:
            rep = load_aggregator(aggregator, config.init_aggregator)
            if log:
                log(f"init_aggregator {config.init_aggregator}: {len(rep['matched'])} tensors loaded, "
                    f"missing {rep['missing']}, unexpected {rep['unexpected']}, "
                    f"mismatched {rep['mismatched']}")
    return MilModel(aggregator, task.n_outputs, config.modality, report_dim, config.fusion_hidden,
                    config.dropout)


def embed_patient_reports(config: MilConfig, records: list[PatientRecord], progress: bool = True) -> np.ndarray:
    """(P, E) MUSK report embeddings of the patients (:func:`openmusk.text.embed_reports`: long
    reports by windows), cached in ``config.report_cache``."""
    from openmusk.core.runtime import resolve_device
    from openmusk.model import create_model
    from openmusk.text import embed_reports, get_tokenizer

    model = create_model(config.report_model, pretrained=config.report_weights, device=resolve_device(config.device))
    cache = config.report_cache or str(Path(config.output_dir) / "report_embeddings.h5")
    return embed_reports([r.report for r in records], model, get_tokenizer(), cache,
                         model_name=config.report_model, progress=progress)


def _make_task(config: MilConfig, train_records: list[PatientRecord], classes: list[str]):
    """Task of a fold; survival bins come from the fold's training patients only."""
    if config.task == "classification":
        return ClassificationTask(list(classes))
    edges = []
    if config.loss == "nll":
        edges = time_bins(np.array([r.time for r in train_records]),
                          np.array([r.event for r in train_records]), config.n_bins).tolist()
    return SurvivalTask(config.loss, edges, config.nll_alpha)


def _dataset(config: MilConfig, records: list[PatientRecord], task, reports: dict[str, np.ndarray] | None,
             train: bool) -> BagDataset:
    """A BagDataset with the task's bins and the patients' report embeddings."""
    bins = None
    if getattr(task, "loss_name", "") == "nll":
        bins = assign_bins(np.array([r.time for r in records]), np.asarray(task.edges))
    rep = None if reports is None else np.stack([reports[r.patient_id] for r in records])
    return BagDataset(records, rep, bins, config.max_instances if train else None,
                      load_features=config.modality != "text", seed=config.seed)


def _fit_config(config: MilConfig) -> FitConfig:
    """The optimisation part of a MilConfig."""
    return FitConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                     warmup_epochs=config.warmup_epochs, batch_size=config.batch_size,
                     patience=config.patience, precision=config.precision, device=config.device,
                     seed=config.seed)


def _load_cohort(config: MilConfig, log: Callable[[str], None], progress: bool):
    """Records with feature files, class names, feature dim, skipped items and report embeddings."""
    records, classes = read_cohort(config.cohort, config.task, config.patient_column,
                                   config.slide_column, config.label_column, config.time_column,
                                   config.event_column, config.report_column, config.covariates,
                                   need_report=config.modality != "image")
    skipped, dim = [], 0
    if config.modality != "text":
        records, skipped, dim = attach_features(records, config.features_dir)
        for s in skipped:
            log(f"skipped {s['patient_id']}/{s['slide_id'] or '-'}: {s['reason']}")
    reports = None
    if config.modality != "image":
        emb = embed_patient_reports(config, records, progress)
        reports = {r.patient_id: e for r, e in zip(records, emb)}
    return records, classes, dim, skipped, reports


def train(config: MilConfig, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Cross-validate the configured model and write the results folder; resumes finished folds.

    ``<output_dir>``: ``config.json``, ``skipped.csv``, ``fold_<k>/`` (model, predictions,
    metrics, ``attention.h5`` and per-slide attention CSV / heatmap / top-tile grid),
    ``oof_predictions.csv``, ``metrics.json`` (per fold, mean with CI, pooled out-of-fold),
    ``roc.png`` (classification) or ``km.png`` (survival), ``cox_multivariable`` with covariates.
    """
    import pandas as pd

    from openmusk.mil.cv import cross_validate
    from openmusk.mil.interpret import render_attention, save_attention
    from openmusk.mil.plots import plot_km, plot_roc
    from openmusk.mil.trainer import evaluate

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "config.json"
    if previous.is_file():
        old = read_json(previous)
        changed = {k for k, v in config.to_dict().items()
                   if old.get(k) != v and k not in ("epochs", "device", "precision")}
        if changed and any((out / f"fold_{k}" / "metrics.json").is_file() for k in range(config.folds)):
            raise ValueError(f"{out} holds folds trained with a different config (changed: "
                             f"{sorted(changed)}); use another output_dir or delete it")
    write_json(previous, config.to_dict())
    records, classes, dim, skipped, reports = _load_cohort(config, log, progress)
    with atomic_path(out / "skipped.csv", suffix=".csv.tmp") as tmp:
        pd.DataFrame(skipped, columns=["patient_id", "slide_id", "file", "reason"]).to_csv(tmp, index=False)
    report_dim = 0 if reports is None else len(next(iter(reports.values())))
    write_json(out / "cohort.json", {"classes": classes, "feature_dim": dim, "report_dim": report_dim,
                                     "patients": len(records), "skipped": len(skipped)})
    log(f"{len(records)} patients, {sum(len(r.feature_files) for r in records)} slides, "
        f"task {config.task} ({config.loss}), modality {config.modality}, model {config.model}")
    strata = (ClassificationTask(classes) if config.task == "classification" else SurvivalTask()).strata(records)

    def build(train_recs):
        task = _make_task(config, train_recs, classes)
        return task, build_model(config, task, dim, report_dim, log)

    def after_fold(k, model, task, test_recs, test_set, fold_dir):
        if config.modality == "text":
            return
        _, attention = evaluate(model, test_set, task, _fit_config(config), keep_attention=True)
        slides = {r.patient_id: [Path(f).stem for f in r.feature_files] for r in test_recs}
        save_attention(fold_dir / "attention.h5", attention, slides)
        from openmusk.mil.interpret import read_attention
        rows = render_attention(read_attention(fold_dir / "attention.h5"), fold_dir / "attention",
                                _slide_finder(config), _tile_sizer(config), config.top_tiles,
                                config.slide_mpp)
        write_json(fold_dir / "attention" / "index.json", rows)

    result = cross_validate(
        records, strata, build, lambda recs, task, tr: _dataset(config, recs, task, reports, tr),
        _fit_config(config), out, folds=config.folds, val_fraction=config.val_fraction,
        balanced_sampler=config.balanced_sampler, after_fold=after_fold, n_resamples=config.bootstrap,
        log=log, progress=progress)
    oof = result["oof"]
    task0 = task_from_dict(read_json(out / "fold_0" / "task.json"))
    pooled = task0.metrics(oof, n_resamples=config.bootstrap, seed=config.seed) \
        if config.task == "classification" else _pooled_survival(oof, config, records)
    if config.task == "classification":
        plot_roc(oof["label"], task0.probs(oof), classes, out / "roc.png",
                 title=f"{config.model}, {config.modality}: out-of-fold ROC (n={len(oof)})")
    else:
        try:
            plot_km(oof["time"], oof["event"], oof["risk_group"] == "high", out / "km.png",
                    title=f"{config.model}, {config.modality}: out-of-fold risk groups")
        except ValueError as e:
            pooled["km_plot_error"] = str(e)
    metrics = {"summary": result["summary"], "pooled": pooled,
               "folds": result["folds"], "skipped": len(skipped)}
    write_json(out / "metrics.json", metrics)
    mean = result["summary"]["mean"]
    if mean:
        log(f"{result['summary']['metric']} over {config.folds} folds: {mean['value']:.3f} "
            f"[{mean['low']:.3f}, {mean['high']:.3f}]; results in {out}")
    return metrics


def _pooled_survival(oof, config: MilConfig, records: list[PatientRecord]) -> dict:
    """Out-of-fold survival metrics: c-index on per-fold risk ranks, KM on per-fold median groups,
    and the multivariable Cox regression with the clinical covariates."""
    from openmusk.mil.metrics import cox_multivariable, km_risk_groups, survival_metrics

    rank = oof.groupby("fold")["risk"].rank(pct=True).to_numpy()  # folds' risk scales differ
    t, e = oof["time"].to_numpy(float), oof["event"].to_numpy(int)
    out = survival_metrics(t, e, rank, n_resamples=config.bootstrap, seed=config.seed)
    out["risk_used"] = "within-fold percentile rank of the predicted risk"
    try:
        km = km_risk_groups(t, e, (oof["risk_group"] == "high").astype(float).to_numpy(), threshold=0.5)
        out["km_split"] = {k: v for k, v in km.items() if k != "km"}
    except ValueError as err:
        out["km_split_error"] = str(err)
    if config.covariates:
        import pandas as pd

        cov = {r.patient_id: r.covariates for r in records}
        table = pd.DataFrame([cov[str(i)] for i in oof["id"]])
        try:
            out["cox_multivariable"] = cox_multivariable(t, e, rank, table)
        except Exception as err:  # lifelines convergence problems are reported, not fatal
            out["cox_multivariable_error"] = f"{type(err).__name__}: {err}"
    return out


def _slide_finder(config: MilConfig) -> Callable[[str], str | None]:
    """slide id -> image path in ``slides_dir`` (None when absent or not configured)."""
    def find(slide_id: str) -> str | None:
        if not config.slides_dir:
            return None
        p = Path(config.slides_dir) / f"{slide_id}{config.slide_extension}"
        return str(p) if p.is_file() else None
    return find


def _tile_sizer(config: MilConfig) -> Callable[[str], int]:
    """slide id -> level-0 tile size: the config's, else the features file's coords attributes."""
    from openmusk.data.features_h5 import read_coords_file

    def size(slide_id: str) -> int:
        if config.tile_size:
            return int(config.tile_size)
        path = Path(config.features_dir) / f"{slide_id}.h5"
        attrs = read_coords_file(path)[1]
        for key in ("patch_size_level0", "patch_size"):
            if key in attrs:
                return int(attrs[key])
        raise ValueError(f"{path}: coords have no 'patch_size_level0' attribute; set tile_size in the config")
    return size


def predict(results_dir: str | os.PathLike, cohort: str | None = None, features_dir: str | None = None,
            out_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
            progress: bool = True):
    """Apply every fold's model of a finished run to a cohort and average them (an ensemble).

    Classification: mean class probabilities; survival: mean within-cohort percentile rank of each
    fold's risk (fold risk scales differ). Writes ``predictions.csv`` (ensemble and per-fold
    columns) and ``attention.h5`` (mean attention) into ``out_dir`` and returns the table.
    Outcome columns may be absent from the cohort CSV.
    """
    import dataclasses

    import pandas as pd

    from openmusk.core.config import config_from_dict
    from openmusk.mil.cv import load_model_state
    from openmusk.mil.interpret import save_attention
    from openmusk.mil.trainer import evaluate

    results_dir = Path(results_dir)
    cfg_file = results_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{results_dir}: no config.json; is it the output_dir of `mil train`?")
    config = config_from_dict(MilConfig, read_json(cfg_file), where=str(cfg_file))
    config = dataclasses.replace(config, cohort=cohort or config.cohort,
                                 features_dir=features_dir or config.features_dir)
    out = Path(out_dir or results_dir / "predictions")
    meta = read_json(results_dir / "cohort.json")
    folds = sorted(p for p in results_dir.glob("fold_*") if (p / "metrics.json").is_file())
    if not folds:
        raise FileNotFoundError(f"{results_dir}: no finished fold (fold_*/metrics.json)")
    records = _prediction_records(config, meta["classes"])
    skipped, dim = [], 0
    if config.modality != "text":
        records, skipped, dim = attach_features(records, config.features_dir)
        if dim != meta["feature_dim"]:
            raise ValueError(f"features in {config.features_dir} have dim {dim}, the models "
                             f"expect {meta['feature_dim']}")
    reports = None
    if config.modality != "image":
        emb = embed_patient_reports(config, records, progress)
        reports = {r.patient_id: e for r, e in zip(records, emb)}
    tables, attn_sum = [], {}
    for fold_dir in folds:
        task = task_from_dict(read_json(fold_dir / "task.json"))
        model = load_model_state(build_model(config, task, dim, meta["report_dim"]),
                                 fold_dir / "model.safetensors")
        ds = _dataset(config, records, task, reports, False)
        ds.bins = None
        table, attention = evaluate(model, ds, task, _fit_config(config), keep_attention=True)
        tables.append((fold_dir.name, task, table))
        for pid, (a, sample) in attention.items():
            prev = attn_sum.get(pid)
            attn_sum[pid] = (a if prev is None else prev[0] + a, sample)
        log(f"{fold_dir.name}: predicted {len(table)} patients")
    result = pd.DataFrame({"id": tables[0][2]["id"]})
    if config.task == "classification":
        for c in meta["classes"]:
            result[f"prob_{c}"] = np.mean([t[f"prob_{c}"].to_numpy() for _, _, t in tables], axis=0)
        result["predicted"] = np.array(meta["classes"])[
            result[[f"prob_{c}" for c in meta["classes"]]].to_numpy().argmax(1)]
        for name, _, t in tables:
            result[f"{name}_prob_{meta['classes'][-1]}"] = t[f"prob_{meta['classes'][-1]}"]
    else:
        ranks = [t["risk"].rank(pct=True).to_numpy() for _, _, t in tables]
        result["risk"] = np.mean(ranks, axis=0)
        for name, _, t in tables:
            result[f"{name}_risk"] = t["risk"]
    with atomic_path(out / "predictions.csv", suffix=".csv.tmp") as tmp:
        result.to_csv(tmp, index=False)
    if attn_sum:
        slides = {r.patient_id: [Path(f).stem for f in r.feature_files] for r in records}
        save_attention(out / "attention.h5", {k: (a / len(tables), s) for k, (a, s) in attn_sum.items()},
                       slides)
    log(f"predictions for {len(result)} patients ({len(skipped)} items skipped) in {out}")
    return result


def _prediction_records(config: MilConfig, classes: list[str]) -> list[PatientRecord]:
    """Patients of a cohort CSV for prediction: outcome columns optional."""
    import pandas as pd

    df = pd.read_csv(config.cohort, dtype={config.patient_column: str, config.slide_column: str})
    for col in (config.patient_column, config.slide_column):
        if col not in df.columns:
            raise ValueError(f"{config.cohort}: missing column {col!r}; found {list(df.columns)}")
    records: dict[str, PatientRecord] = {}
    for i, row in enumerate(df.to_dict("records")):
        pid = str(row[config.patient_column])
        slides = [s.strip() for s in str(row[config.slide_column]).split(";") if s.strip()]
        rec = records.setdefault(pid, PatientRecord(pid, []))
        rec.slides.extend(s for s in slides if s not in rec.slides)
        if config.report_column in df.columns and not pd.isna(row[config.report_column]):
            rec.report = str(row[config.report_column])
        if config.task == "classification" and config.label_column in df.columns \
                and str(row[config.label_column]) in classes:
            rec.label = classes.index(str(row[config.label_column]))
        if config.task == "survival" and config.time_column in df.columns:
            rec.time = float(row[config.time_column])
            rec.event = int(row[config.event_column]) if config.event_column in df.columns else -1
    return list(records.values())
