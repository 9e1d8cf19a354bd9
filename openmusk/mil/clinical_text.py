"""Clinical variables as report text: a cohort's columns rendered through an editable template.

Some cohorts ship clinical variables, not prose (VisioMel: age, sex, body site, Breslow thickness,
ulceration); the MUSK paper turned them into a report for the text branch. A template is a text
file with ``{column}`` placeholders (Python ``str.format`` fields, so ``{age:.0f}`` works); one
ships with the package (``clinical_melanoma``, for :func:`openmusk.mil.cohorts.visiomel_cohort`).
A missing value renders as ``not recorded``; a placeholder naming no column is an error naming it.

>>> texts = render_reports(df, "my_template.txt")        # or set report_template in the mil config
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Mapping

__all__ = ["load_template", "render_report", "render_reports", "TEMPLATES", "MISSING"]

_DIR = Path(__file__).resolve().parent.parent / "assets" / "prompts"
TEMPLATES = ("clinical_melanoma",)
MISSING = "not recorded"


def load_template(template: str | os.PathLike) -> str:
    """The text of a shipped template name or of a template file."""
    path = _DIR / f"{template}.txt" if str(template) in TEMPLATES else Path(template)
    if not path.is_file():
        raise FileNotFoundError(f"report template {template!r}: no such file {path} (shipped: {TEMPLATES})")
    return path.read_text(encoding="utf-8").strip()


def _fields(template: str) -> list[str]:
    """Column names used by the template's placeholders."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


class _Row(dict):
    """Missing values (None, NaN, empty) become :data:`MISSING`."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
            return MISSING
        return value


def render_report(template: str, row: Mapping[str, Any], where: str = "row") -> str:
    """One row's report text; a placeholder without a column is an error naming ``where``."""
    missing = [f for f in _fields(template) if f not in row]
    if missing:
        raise KeyError(f"{where}: report template needs column(s) {missing}; found {sorted(row)}")
    try:
        return template.format_map(_Row(row))
    except (ValueError, TypeError) as e:  # e.g. {age:.0f} on "not recorded"
        raise ValueError(f"{where}: cannot render the report template ({e})") from e


def render_reports(table, template: str | os.PathLike, patient_column: str = "patient_id",
                   where: str = "cohort") -> dict[str, str]:
    """patient id -> rendered report, from the first row of each patient in a DataFrame."""
    text = load_template(template)
    if patient_column not in table.columns:
        raise KeyError(f"{where}: missing column {patient_column!r}")
    out: dict[str, str] = {}
    for i, row in enumerate(table.to_dict("records")):
        pid = str(row[patient_column])
        if pid not in out:
            out[pid] = render_report(text, row, f"{where}: row {i + 2}")
    return out
