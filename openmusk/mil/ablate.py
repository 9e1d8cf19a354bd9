"""Modality ablation in one call: image-only, report-only and both on the same folds, compared pairwise.

``ablate(config)`` trains ``config`` three times with ``modality`` image, text and both into
``<output_dir>/{image,text,both}`` (one shared report-embedding cache; finished folds resume),
checks the three runs used the same folds, compares both-vs-image, both-vs-text and image-vs-text
on the out-of-fold predictions (:func:`openmusk.mil.compare.compare_runs`: DeLong for AUC, paired
bootstrap for the c-index) and writes ``ablation.csv`` (one table), ``ablation.png`` (pooled metric
with CI per modality, fold-wise paired lines, paired p-values) and ``report.html``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from openmusk.core.io import atomic_path, read_json, save_figure, write_json
from openmusk.mil.config import MilConfig

__all__ = ["ablate", "MODALITIES", "PAIRS"]

MODALITIES = ("image", "text", "both")
PAIRS = (("both", "image"), ("both", "text"), ("image", "text"))


def _same_folds(out: Path, folds: int) -> bool:
    """Whether the three runs held out the same patients in every fold."""
    for k in range(folds):
        tests = [set(read_json(out / m / f"fold_{k}" / "split.json")["test"]) for m in MODALITIES]
        if not tests[0] == tests[1] == tests[2]:
            return False
    return True


def ablate(config: MilConfig, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run the three modalities and the paired comparisons; returns ``{"table", "comparisons", "same_folds"}``."""
    import pandas as pd

    from openmusk.mil.api import train
    from openmusk.mil.compare import compare_runs
    from openmusk.mil.genomic import refuse_genomic
    from openmusk.mil.html_report import write_html_report

    refuse_genomic(config.model, "mil ablate", config.output_dir)
    out = Path(config.output_dir)
    cache = config.report_cache or str(out / "report_embeddings.h5")
    runs = {}
    for m in MODALITIES:
        log(f"ablation: modality {m}")
        cfg = dataclasses.replace(config, modality=m, output_dir=str(out / m), report_cache=cache)
        runs[m] = train(cfg, log=log, progress=progress)
    same = _same_folds(out, config.folds)
    if not same:
        log("WARNING: the modalities used different folds (a patient without usable slide features is "
            "dropped from image and both but kept in text); comparisons pair the common patients only")
    key = runs["both"]["summary"]["metric"]
    rows = []
    for m in MODALITIES:
        pooled = runs[m]["pooled"].get(key, {})
        mean = runs[m]["summary"]["mean"] or {}
        rows.append({"row": m, "metric": key, "pooled": pooled.get("value", np.nan),
                     "pooled_low": pooled.get("low", np.nan), "pooled_high": pooled.get("high", np.nan),
                     "fold_mean": mean.get("value", np.nan), "fold_mean_low": mean.get("low", np.nan),
                     "fold_mean_high": mean.get("high", np.nan)})
    comparisons = {}
    for x, y in PAIRS:
        res = compare_runs(out / x, out / y, out / f"compare_{x}_vs_{y}", names=(x, y),
                           n_resamples=config.bootstrap, seed=config.seed, log=log)
        o = res["overall"]
        comparisons[f"{x}_vs_{y}"] = res
        rows.append({"row": f"{x} - {y}", "metric": key, "diff": o["diff"], "diff_low": o["low"],
                     "diff_high": o["high"], "test": o.get("test", ""), "pvalue": o["pvalue"], "n": res["n_common"]})
    table = pd.DataFrame(rows)
    with atomic_path(out / "ablation.csv", suffix=".csv.tmp") as tmp:
        table.to_csv(tmp, index=False)
    write_json(out / "ablation.json", {"same_folds": same, "rows": rows})
    _figure(runs, rows, key, out / "ablation.png")
    write_html_report(out / "report.html", f"modality ablation: {out.name}",
                      [("Table", [f"same folds for all modalities: {same}", rows]),
                       ("Figure", [out / "ablation.png", *(out / f"compare_{x}_vs_{y}" / "forest.png" for x, y in PAIRS)])])
    log(f"ablation table: {out / 'ablation.csv'}")
    return {"table": table, "comparisons": comparisons, "same_folds": same}


def _figure(runs: dict, rows: list[dict], key: str, path: Path) -> Path:
    """Left: pooled metric with 95% CI per modality, paired p-values; right: per-fold paired lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    vals = [r["pooled"] for r in rows[:3]]
    err = [[v - r["pooled_low"] for v, r in zip(vals, rows[:3])], [r["pooled_high"] - v for v, r in zip(vals, rows[:3])]]
    ax.bar(range(3), vals, yerr=err, capsize=5, color=["tab:blue", "tab:orange", "tab:green"])
    ax.set_xticks(range(3))
    ax.set_xticklabels(MODALITIES)
    ax.set(ylabel=f"pooled out-of-fold {key}", ylim=(0, 1.15), title="ablation (95% CI)")
    pos = {m: i for i, m in enumerate(MODALITIES)}
    for level, r in enumerate(rows[3:]):
        x, y = r["row"].split(" - ")
        h = 1.02 + 0.045 * level
        ax.plot([pos[x], pos[x], pos[y], pos[y]], [h - 0.01, h, h, h - 0.01], color="k", lw=1)
        ax.text((pos[x] + pos[y]) / 2, h, f"p={r['pvalue']:.2g}", ha="center", va="bottom", fontsize=8)
    per_fold = [runs[m]["summary"]["per_fold"] for m in MODALITIES]
    if len({len(f) for f in per_fold}) == 1:  # a fold whose metric is undefined breaks the pairing
        for k in range(len(per_fold[0])):
            ax2.plot(range(3), [f[k] for f in per_fold], "o-", color="grey", alpha=0.7)
    ax2.set_xticks(range(3))
    ax2.set_xticklabels(MODALITIES)
    ax2.set(ylabel=f"fold {key}", title="folds (paired)")
    return save_figure(fig, path, bbox_inches="tight")
