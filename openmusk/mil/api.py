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

from openmusk.core.io import atomic_path, read_json, read_table, write_json
from openmusk.mil.cohort import BagDataset, PatientRecord, attach_features, read_cohort
from openmusk.mil.config import MilConfig
from openmusk.mil.losses import assign_bins, time_bins
from openmusk.mil.models import MilModel, build_aggregator, load_aggregator
from openmusk.mil.tasks import ClassificationTask, SurvivalTask, task_from_dict
from openmusk.mil.trainer import FitConfig

__all__ = ["train", "predict", "build_model", "embed_patient_reports", "summarize_cohort"]


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


def embed_patient_reports(config: MilConfig, records: list[PatientRecord], progress: bool = True,
                          log: Callable[[str], None] | None = None) -> np.ndarray:
    """(P, E) MUSK report vectors of the patients in ``config.report_mode`` (raw windows, a
    summary, or both: :func:`openmusk.text.report.embed_report_mode`), cached in ``config.report_cache``.

    With ``config.report_template`` each report is first rendered from the cohort's columns
    (:mod:`openmusk.mil.clinical_text`); summaries come from :mod:`openmusk.text.summarize` (cached
    beside the cohort, made by ``config.summary.backend`` when missing).
    """
    from openmusk.core.runtime import resolve_device
    from openmusk.model import create_model
    from openmusk.text import get_tokenizer
    from openmusk.text.report import embed_report_mode

    _apply_report_template(config, records)
    summaries = None
    if config.report_mode != "raw-windows":
        from openmusk.text.summarize import default_cache, load_summarizer, summarize_reports

        s = config.summary
        summaries = summarize_reports([r.report for r in records], load_summarizer(s), s.prompt,
                                      s.cache or default_cache(config.cohort), model=s.model or None,
                                      progress=progress, log=log)
    model = create_model(config.report_model, pretrained=config.report_weights, device=resolve_device(config.device))
    cache = config.report_cache or str(Path(config.output_dir) / "report_embeddings.h5")
    return embed_report_mode(config.report_mode, [r.report for r in records], summaries, model,
                             get_tokenizer(), cache, model_name=config.report_model,
                             max_windows=config.report_max_windows, progress=progress)


def _apply_report_template(config: MilConfig, records: list[PatientRecord]) -> None:
    """With ``config.report_template``, each record's report is rendered from its cohort columns."""
    if not config.report_template:
        return
    from openmusk.mil.clinical_text import render_reports

    table = read_table(config.cohort, dtype={config.patient_column: str})
    texts = render_reports(table, config.report_template, config.patient_column, config.cohort)
    for r in records:
        r.report = texts[r.patient_id]


def summarize_cohort(config: MilConfig, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Summarise every patient's report of ``config.cohort`` with ``config.summary`` (cached,
    resumable); returns the cache file. Nothing is trained."""
    from openmusk.text.summarize import default_cache, load_summarizer, summarize_reports

    records, _ = read_cohort(config.cohort, None, config.patient_column, config.slide_column,
                             report_column=config.report_column, need_report=not config.report_template)
    _apply_report_template(config, records)
    s = config.summary
    if not s.backend:
        raise ValueError("summary.backend is empty: set it to transformers, openai or module:function")
    cache = Path(s.cache or default_cache(config.cohort))
    summarize_reports([r.report for r in records], load_summarizer(s), s.prompt, cache, progress=progress, log=log)
    log(f"{len(records)} report summaries in {cache}")
    return cache


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
                     seed=config.seed, min_epochs=config.min_epochs)


def _load_cohort(config: MilConfig, log: Callable[[str], None], progress: bool):
    """Records with feature files, class names, feature dim, skipped items and report embeddings."""
    records, classes = read_cohort(config.cohort, config.task, config.patient_column,
                                   config.slide_column, config.label_column, config.time_column,
                                   config.event_column, config.report_column, config.covariates,
                                   need_report=config.modality != "image" and not config.report_template)
    skipped, dim = [], 0
    if config.modality != "text":
        records, skipped, dim = attach_features(records, config.features_dir)
        for s in skipped:
            log(f"skipped {s['patient_id']}/{s['slide_id'] or '-'}: {s['reason']}")
    reports = None
    if config.modality != "image":
        emb = embed_patient_reports(config, records, progress, log)
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
    from openmusk.mil.genomic import GENOMIC_MODELS
    from openmusk.mil.interpret import render_attention, save_attention

    if config.model in GENOMIC_MODELS:  # slide features + a genomics table (MCAT, PORPOISE, MOTCat, CMTA)
        from openmusk.mil.genomic import train_genomic
        return train_genomic(config, log, progress)
    from openmusk.mil.plots import plot_km, plot_roc
    from openmusk.mil.trainer import evaluate

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "config.json"
    if previous.is_file():
        old = read_json(previous)
        defaults = MilConfig().to_dict()  # keys added since the run started count as their default
        changed = {k for k, v in config.to_dict().items()
                   if old.get(k, defaults.get(k)) != v
                   and k not in ("epochs", "device", "precision", "subgroups", "baselines")}
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
                 title=f"{config.model}, {config.modality}: out-of-fold ROC (n={len(oof)})",
                 band_resamples=min(200, config.bootstrap))
        if len(classes) == 2:
            from openmusk.mil.plots import plot_calibration

            plot_calibration(oof["label"], task0.probs(oof)[:, 1], out / "calibration.png",
                             title=f"{config.model}, {config.modality}: out-of-fold calibration")
    else:
        try:
            plot_km(oof["time"], oof["event"], oof["risk_group"] == "high", out / "km.png",
                    title=f"{config.model}, {config.modality}: out-of-fold risk groups")
        except ValueError as e:
            pooled["km_plot_error"] = str(e)
    metrics = {"summary": result["summary"], "pooled": pooled,
               "folds": result["folds"], "skipped": len(skipped)}
    metrics.update(_subgroups_and_baselines(config, oof, out, log))
    write_json(out / "metrics.json", metrics)
    _write_run_report(config, metrics, out)
    mean = result["summary"]["mean"]
    if mean:
        log(f"{result['summary']['metric']} over {config.folds} folds: {mean['value']:.3f} "
            f"[{mean['low']:.3f}, {mean['high']:.3f}]; results in {out}")
    return metrics


def _subgroups_and_baselines(config: MilConfig, oof, out: Path, log: Callable[[str], None]) -> dict:
    """``config.subgroups`` (per-group KM/HR or AUC, forest plot of HRs) and ``config.baselines``
    (clinical-only model per column, and all columns together, on the same folds)."""
    from openmusk.mil.subgroups import clinical_baseline, cohort_table, subgroup_analysis

    if not (config.subgroups or config.baselines):
        return {}
    table = cohort_table(config.cohort, config.patient_column, [*config.subgroups, *config.baselines])
    res: dict = {}
    if config.subgroups:
        rows = [r for col in config.subgroups
                for r in subgroup_analysis(oof, table, col, config.task, out, config.bootstrap, config.seed)]
        res["subgroups"] = rows
        hr = [r for r in rows if "hazard_ratio" in r and np.isfinite(r["hr_high"])]
        if hr:
            from openmusk.mil.plots import plot_forest

            plot_forest([f"{r['column']} = {r['group']} (n={r['n']})" for r in hr],
                        [r["hazard_ratio"] for r in hr], [r["hr_low"] for r in hr],
                        [r["hr_high"] for r in hr], out / "forest_subgroups.png",
                        title="high vs low predicted risk within subgroups",
                        notes=[f"p={r['logrank_p']:.2g}" for r in hr])
        for r in rows:
            log(f"subgroup {r['column']}={r['group']} (n={r['n']}): " + ", ".join(
                f"{k} {r[k]:.3g}" for k in ("hazard_ratio", "logrank_p", "auc") if k in r) + r.get("error", ""))
    if config.baselines:
        sets = [[c] for c in config.baselines] + ([list(config.baselines)] if len(config.baselines) > 1 else [])
        res["baselines"] = []
        for cols in sets:
            try:
                b = clinical_baseline(oof, table, cols, config.task, config.bootstrap, config.seed)
            except Exception as err:  # a degenerate column (one level) is reported, not fatal
                b = {"columns": cols, "error": f"{type(err).__name__}: {err}"}
            res["baselines"].append(b)
            key = "c_index" if config.task == "survival" else "auc"
            if key in b:
                p = b.get("model_vs_baseline", {}).get("pvalue", float("nan"))
                log(f"clinical baseline {'+'.join(cols)}: {key} {b[key]:.3f} vs model {b['model_' + key]:.3f} "
                    f"(paired p {p:.3g})")
    return res


def _write_run_report(config: MilConfig, metrics: dict, out: Path) -> None:
    """``report.html``: headline metrics, folds, subgroups, baselines and the plots, embedded."""
    from openmusk.mil.html_report import write_html_report

    s = metrics["summary"]
    head = [f"task {config.task} ({config.loss}), modality {config.modality}, model {config.model}, "
            f"report mode {config.report_mode}, {config.folds} folds"]
    if s.get("mean"):
        head.append(f"{s['metric']} over folds: {s['mean']['value']:.3f} [{s['mean']['low']:.3f}, "
                    f"{s['mean']['high']:.3f}]")
    folds = [{"fold": f["fold"], "best_epoch": f["best_epoch"], "epochs_run": f["epochs_run"],
              s["metric"]: f["metrics"].get(s["metric"], {}).get("value", float("nan"))} for f in metrics["folds"]]
    plots = [out / n for n in ("roc.png", "calibration.png", "km.png") if (out / n).is_file()]
    sections = [("Summary", head), ("Folds", [folds]), ("Plots", plots)]
    if "subgroups" in metrics:
        sections.append(("Subgroups", [metrics["subgroups"], *sorted(out.glob("forest_subgroups.png")),
                                       *sorted(out.glob("km_*.png"))]))
    if "baselines" in metrics:
        rows = [{"columns": "+".join(b["columns"]), **{k: v for k, v in b.items() if isinstance(v, (int, float, str))
                                                         and k != "columns"},
                 "paired_p": b.get("model_vs_baseline", {}).get("pvalue", "")} for b in metrics["baselines"]]
        sections.append(("Clinical-only baselines (same folds)", [rows]))
    write_html_report(out / "report.html", f"openmusk mil: {out.name}", sections)


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
    from openmusk.data.features_h5 import patch_size_level0, read_coords_file

    def size(slide_id: str) -> int:
        if config.tile_size:
            return int(config.tile_size)
        path = Path(config.features_dir) / f"{slide_id}.h5"
        coords, attrs = read_coords_file(path)
        try:  # ours, TRIDENT's or CLAM's attributes (CLAM's patch_size is at its patch_level)
            return patch_size_level0(attrs, coords=coords, where=path)
        except ValueError as e:
            raise ValueError(f"{e}; set tile_size in the config") from None
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
    from openmusk.mil.genomic import refuse_genomic
    from openmusk.mil.interpret import save_attention
    from openmusk.mil.trainer import evaluate

    results_dir = Path(results_dir)
    cfg_file = results_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{results_dir}: no config.json; is it the output_dir of `mil train`?")
    config = config_from_dict(MilConfig, read_json(cfg_file), where=str(cfg_file))
    refuse_genomic(config.model, "mil predict", results_dir)
    config = dataclasses.replace(config, cohort=cohort or config.cohort,
                                 features_dir=features_dir or config.features_dir)
    out = Path(out_dir or results_dir / "predictions")
    meta = read_json(results_dir / "cohort.json")
    folds = sorted(p for p in results_dir.glob("fold_*") if (p / "metrics.json").is_file())
    if not folds:
        raise FileNotFoundError(f"{results_dir}: no finished fold (fold_*/metrics.json)")
    records = _prediction_records(config, meta["classes"])
    trained = set()
    for fold_dir in folds:
        split = read_json(fold_dir / "split.json") if (fold_dir / "split.json").is_file() else {}
        trained.update(split.get("train", []) + split.get("val", []))
    seen = [r.patient_id for r in records if r.patient_id in trained]
    if seen:
        log(f"WARNING: in-sample prediction: {len(seen)} of {len(records)} patients "
            f"{'(the training cohort: no --cohort given) ' if cohort is None else ''}were used to train "
            f"the fold models, so their predictions are optimistic; for unbiased estimates use "
            f"{results_dir / 'oof_predictions.csv'} or predict a new cohort")
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

    df = read_table(config.cohort, dtype={config.patient_column: str, config.slide_column: str})
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
