"""A self-contained HTML run report: headline numbers, tables and every plot embedded as PNG.

One file a user can open or mail (images are inlined as base64), written atomically beside the
PNGs it embeds. :func:`train`, :func:`openmusk.mil.ablate.ablate` and
:func:`openmusk.mil.compare.compare_runs` each write one.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Sequence

from openmusk.core.io import atomic_path

__all__ = ["write_html_report"]

_STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
          "font-size:13px;text-align:right}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}"
          "figure{margin:1em 0}figcaption{font-size:13px;color:#555}")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: Sequence[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html_report(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, Sequence]]) -> Path:
    """Write ``sections`` = [(heading, items)]; an item is a string (a paragraph), a list of dicts
    (a table) or a path to a PNG (embedded, its file name as caption). Missing images are noted."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, (str, os.PathLike)) and str(item).endswith(".png"):
                p = Path(item)
                if p.is_file():
                    data = base64.b64encode(p.read_bytes()).decode()
                    parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(p.name)}'>"
                                 f"<figcaption>{html.escape(p.name)}</figcaption></figure>")
                else:
                    parts.append(f"<p>(plot {html.escape(p.name)} was not written)</p>")
            elif isinstance(item, str):
                parts.append(f"<p>{html.escape(item)}</p>")
            else:
                parts.append(_table(list(item)))
    parts.append("</body></html>\n")
    with atomic_path(path, suffix=".html.tmp") as tmp:
        Path(tmp).write_text("".join(parts), encoding="utf-8")
    return Path(path)
