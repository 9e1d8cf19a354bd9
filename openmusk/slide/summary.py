"""The per-run summary CSV (``slide,status,tiles,seconds,error``): one row per slide, rank parts
merged under a file lock so every rank of a torchrun job can write its own."""
from __future__ import annotations

import csv
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from openmusk.core.io import atomic_path

__all__ = ["SUMMARY_FIELDS", "SlideResult", "read_summary", "write_summary", "merge_summary"]

SUMMARY_FIELDS = ("slide", "status", "tiles", "seconds", "error")


@dataclass
class SlideResult:
    """One row of the summary: what happened to one slide."""

    slide: str
    status: str          # done | skipped | no_tissue | failed
    tiles: int = 0
    seconds: float = 0.0
    error: str = ""


def write_summary(path: Path, rows: list[SlideResult]) -> None:
    """Write summary rows as CSV, atomically."""
    with atomic_path(path, suffix=".csv.tmp") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_FIELDS)
        for r in rows:
            writer.writerow([r.slide, r.status, r.tiles, f"{r.seconds:.3f}", r.error])


def merge_summary(out_dir: Path, summary: str, world: int) -> None:
    """Merge the rank parts of this world size into ``<summary>.csv`` under an exclusive lock.

    Every rank merges after writing its own part; the last one to take the lock sees them all.
    """
    with open(out_dir / f".{summary}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = []
        for part in sorted(out_dir.glob(f".{summary}.rank*-of-{world:05d}.csv")):
            rows.extend(read_summary(part))
        rows.sort(key=lambda r: r.slide)
        write_summary(out_dir / f"{summary}.csv", rows)
        fcntl.flock(lock, fcntl.LOCK_UN)


def read_summary(path: str | os.PathLike) -> list[SlideResult]:
    """Rows of a summary CSV (a file, or a features folder's ``summary.csv``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.csv"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != SUMMARY_FIELDS:
            raise ValueError(f"{path}: expected columns {SUMMARY_FIELDS}, got {reader.fieldnames}")
        return [SlideResult(r["slide"], r["status"], int(r["tiles"]), float(r["seconds"]), r["error"])
                for r in reader]
