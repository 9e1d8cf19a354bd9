"""Reports over a results folder: a printed table, markdown + HTML with bar charts (95% CI error
bars, one chart per dataset and task, models side by side as in the paper's figures) and paired
tests of every model against the first one."""
from __future__ import annotations

import html
import os
from pathlib import Path

from openmusk.core.io import atomic_path, read_json, save_figure
from openmusk.core.stats import PAPER_WILCOXON_WARNING

__all__ = ["load_results", "results_rows", "format_table", "comparison_rows", "write_report"]


def load_results(results_dir: str | os.PathLike) -> list[dict]:
    """Every cell result ``<model>/<dataset>/<task>.json`` under ``results_dir``."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    out = []
    for p in sorted(root.glob("*/*/*.json")):
        r = read_json(p)
        if isinstance(r, dict) and {"task", "metrics", "model", "dataset"} <= set(r):
            out.append(r)
    return out


def results_rows(results: list[dict]) -> list[dict]:
    """One row per (dataset, task, metric, model) with the estimate and its interval."""
    rows = []
    for r in results:
        for metric, est in r["metrics"].items():
            rows.append({"dataset": r["dataset"], "task": r["task"], "metric": metric,
                         "model": r["model"], **{k: est[k] for k in ("value", "low", "high", "n")}})
    return sorted(rows, key=lambda x: (x["dataset"], x["task"], x["metric"], x["model"]))


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the rows."""
    head = ("dataset", "task", "metric", "model", "value [95% CI]")
    body = [(r["dataset"], r["task"], r["metric"], r["model"],
             f"{r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}]") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def comparison_rows(results: list[dict], n_resamples: int = 1000, seed: int = 0,
                    method: str = "paired") -> list[dict]:
    """Each model against the alphabetically first model on every shared dataset/task/metric
    (``method``: valid paired tests, or ``paper`` for the paper's Wilcoxon-on-bootstrap)."""
    from openmusk.eval.compare import compare_results

    by_cell: dict[tuple[str, str], dict[str, dict]] = {}
    for r in results:
        by_cell.setdefault((r["dataset"], r["task"]), {})[r["model"]] = r
    rows = []
    for (dataset, task), models in sorted(by_cell.items()):
        names = sorted(models)
        for other in names[1:]:
            try:
                tests = compare_results(models[other], models[names[0]], n_resamples, seed, method)
            except (ValueError, KeyError) as e:
                rows.append({"dataset": dataset, "task": task, "metric": "-", "model": other,
                             "reference": names[0], "test": "not comparable", "p_value": float("nan"),
                             "mean_difference": float("nan"), "note": str(e)})
                continue
            for metric, t in tests.items():
                rows.append({"dataset": dataset, "task": task, "metric": metric, "model": other,
                             "reference": names[0], "test": t["test"], "p_value": t["p_value"],
                             "mean_difference": t["mean_difference"], "note": ""})
    return rows


def _bar_chart(rows: list[dict], title: str, path: Path) -> None:
    """Grouped bars: metrics on the x axis, one bar per model, CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = sorted({r["metric"] for r in rows}, key=lambda m: (m.split("@")[0], len(m), m))
    models = sorted({r["model"] for r in rows})
    table = {(r["metric"], r["model"]): r for r in rows}
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(metrics) * max(1, len(models)) ** 0.5 + 2), 3.6))
    x = np.arange(len(metrics))
    for j, m in enumerate(models):
        vals = [table[(k, m)]["value"] if (k, m) in table else np.nan for k in metrics]
        lo = [table[(k, m)]["value"] - table[(k, m)]["low"] if (k, m) in table else 0 for k in metrics]
        hi = [table[(k, m)]["high"] - table[(k, m)]["value"] if (k, m) in table else 0 for k in metrics]
        ax.bar(x + (j - (len(models) - 1) / 2) * width, vals, width, label=m,
               yerr=np.nan_to_num([lo, hi]), capsize=3)
    ax.set_xticks(x, metrics, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 n_resamples: int = 1000, method: str = "paired") -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png``; returns their paths."""
    results = load_results(results_dir)
    if not results:
        raise ValueError(f"{results_dir}: no result files (<model>/<dataset>/<task>.json)")
    out = Path(out_dir or results_dir)
    rows = results_rows(results)
    comps = comparison_rows(results, n_resamples=n_resamples, method=method)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["task"]), []).append(r)
    figures = {}
    for (dataset, task), g in groups.items():
        fig = out / "figures" / f"{dataset}_{task}.png"
        _bar_chart(g, f"{dataset}: {task}", fig)
        figures[(dataset, task)] = fig

    md = ["# Benchmark report", "", f"{len(results)} results from `{Path(results_dir)}`; "
          "intervals are 95% percentile bootstrap CIs (few-shot: t-intervals over seeds).", ""]
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>Benchmark report</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
         "text-align:left}</style></head><body><h1>Benchmark report</h1>"]
    for (dataset, task), g in groups.items():
        rel = figures[(dataset, task)].relative_to(out).as_posix()
        md += [f"## {dataset} / {task}", "", f"![{dataset} {task}]({rel})", "",
               "| metric | model | value | 95% CI | n |", "|---|---|---|---|---|"]
        md += [f"| {r['metric']} | {r['model']} | {r['value']:.4f} | [{r['low']:.4f}, {r['high']:.4f}] "
               f"| {r['n']} |" for r in g]
        md.append("")
        h += [f"<h2>{html.escape(dataset)} / {html.escape(task)}</h2><img src='{html.escape(rel)}'>",
              "<table><tr><th>metric</th><th>model</th><th>value</th><th>95% CI</th><th>n</th></tr>"]
        h += [f"<tr><td>{html.escape(r['metric'])}</td><td>{html.escape(r['model'])}</td>"
              f"<td>{r['value']:.4f}</td><td>[{r['low']:.4f}, {r['high']:.4f}]</td><td>{r['n']}</td></tr>"
              for r in g]
        h.append("</table>")
    if comps:
        md += ["## Model comparisons", "",
               *([f"> Warning: {PAPER_WILCOXON_WARNING}", ""] if method == "paper" else []),
               "| dataset | task | metric | model | vs | test | p | mean diff |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| {c['dataset']} | {c['task']} | {c['metric']} | {c['model']} | {c['reference']} | "
               f"{c['test']} | {c['p_value']:.3g} | {c['mean_difference']:+.4f} |" for c in comps]
        h += ["<h2>Model comparisons</h2><table><tr><th>dataset</th><th>task</th><th>metric</th>"
              "<th>model</th><th>vs</th><th>test</th><th>p</th><th>mean diff</th></tr>"]
        h += [f"<tr><td>{html.escape(c['dataset'])}</td><td>{html.escape(c['task'])}</td>"
              f"<td>{html.escape(c['metric'])}</td><td>{html.escape(c['model'])}</td>"
              f"<td>{html.escape(c['reference'])}</td><td>{html.escape(c['test'])}</td>"
              f"<td>{c['p_value']:.3g}</td><td>{c['mean_difference']:+.4f}</td></tr>" for c in comps]
        h.append("</table>")
    h.append("</body></html>")
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    with atomic_path(paths["markdown"], suffix=".md.tmp") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    with atomic_path(paths["html"], suffix=".html.tmp") as tmp:
        tmp.write_text("\n".join(h) + "\n")
    paths["figures"] = out / "figures"
    return paths
