"""A folder of slides -> a features folder: resumable, fault-tolerant, spread over torchrun ranks.

Each slide is written to a temporary file and renamed, so a killed run leaves no partial file; a
rerun skips finished slides; an unreadable slide is recorded in the summary CSV and the run goes
on. Under ``torchrun`` every rank takes every world-th slide and writes its own summary part,
merged into ``summary.csv`` under a file lock.
"""
from __future__ import annotations

import glob
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from openmusk.core import dist
from openmusk.slide.config import ExtractConfig
from openmusk.slide.encode import extract_slide, load_slide_encoder, tiles_for_slide
from openmusk.slide.reader import SlideError, list_slides, open_slide
from openmusk.slide.summary import SlideResult, merge_summary, write_summary

__all__ = ["extract_features", "tile_slides", "clear_leftovers"]

Slides = str | os.PathLike | Iterable[str | os.PathLike]


def extract_features(slides: Slides, out_dir: str | os.PathLike, config: ExtractConfig | None = None,
                     encoder: Any = None, progress: bool = True) -> list[SlideResult]:
    """Extract every slide (a folder or a list of paths) into ``out_dir``; returns this rank's rows.

    ``encoder`` defaults to the one ``config`` names. Under torchrun each rank takes every
    world-th slide; ``out_dir/summary.csv`` covers all ranks.
    """
    config = config or ExtractConfig()
    paths = _slide_paths(slides)
    dist.init_distributed()
    encoder = encoder if encoder is not None else load_slide_encoder(config)
    return _run_folder(paths, Path(out_dir), "summary",
                       lambda p: extract_slide(p, out_dir, encoder, config, progress=progress), progress)


def clear_leftovers(out_dir: str | os.PathLike, name: str) -> list[str]:
    """Before slide ``name`` is (re)done: remove the temp files a killed run left for it and its
    outputs that cannot be opened (0-byte, truncated, not HDF5); returns one note per removal.

    Only this slide's own files under ``out_dir`` (any layout's subfolders) are touched; under
    torchrun the slide belongs to this rank alone. Readable files, ours or another tool's, stay.
    """
    import h5py

    out_dir, notes = Path(out_dir), []
    if not out_dir.is_dir():
        return notes
    stem = glob.escape(name)
    for tmp in out_dir.glob(f"**/.{stem}.h5.*.tmp"):
        tmp.unlink(missing_ok=True)
        notes.append(f"removed stale temp file {tmp.relative_to(out_dir)}")
    for target in out_dir.glob(f"**/{stem}.h5"):
        try:
            with h5py.File(target, "r"):
                pass
        except OSError as e:
            target.unlink()
            notes.append(f"redone: {target.relative_to(out_dir)} was unreadable ({str(e).splitlines()[0][:120]})")
    return notes


def tile_slides(slides: Slides, out_dir: str | os.PathLike, config: ExtractConfig | None = None,
                progress: bool = True) -> list[SlideResult]:
    """Segment and tile every slide: ``out_dir/coords/NAME.h5`` and ``out_dir/tissue/NAME.geojson``
    (in ``config.layout``: TRIDENT's ``patches/NAME_patches.h5``, CLAM's ``patches/NAME.h5``).

    Extraction into the same ``out_dir`` later reuses these coords. Summary: ``tiling_summary.csv``.
    """
    config = config or ExtractConfig()
    out_dir = Path(out_dir)

    def work(path: Path) -> SlideResult:
        start = time.perf_counter()
        with open_slide(path, default_mpp=config.slide_mpp) as slide:
            tiles = tiles_for_slide(slide, out_dir, config)
        return SlideResult(path.stem, "done" if len(tiles) else "no_tissue", len(tiles),
                           time.perf_counter() - start)

    paths = _slide_paths(slides)
    dist.init_distributed()
    return _run_folder(paths, out_dir, "tiling_summary", work, progress)


def _slide_paths(slides: Slides) -> list[Path]:
    """Slide paths from a folder, one slide file or a list; names must be unique (they name the outputs)."""
    if isinstance(slides, (str, os.PathLike)) and Path(slides).is_file():
        slides = [slides]
    paths = list_slides(slides) if isinstance(slides, (str, os.PathLike)) else [Path(p) for p in slides]
    names = [p.stem for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"slides with the same name would share an output file: {dupes}")
    return paths


def _run_folder(paths: list[Path], out_dir: Path, summary: str, work: Callable[[Path], SlideResult],
                progress: bool) -> list[SlideResult]:
    """Run ``work`` on this rank's slides; a failing slide becomes a ``failed`` row, the rest go on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = dist.rank(), dist.world_size()
    results: list[SlideResult] = []
    part = out_dir / f".{summary}.rank{rank:05d}-of-{world:05d}.csv"
    write_summary(part, results)
    overall = tqdm(dist.shard_items(paths), desc=f"slides (rank {rank}/{world})" if world > 1 else "slides",
                   unit="slide", disable=not progress, position=0)
    for path in overall:
        start = time.perf_counter()
        try:
            notes = clear_leftovers(out_dir, path.stem)
            result = work(path)
            if notes:
                result.error = "; ".join([*notes, result.error] if result.error else notes)
        except Exception as e:  # one bad slide must not stop the others
            detail = f"{type(e).__name__}: {e}"
            if not isinstance(e, (SlideError, ValueError, OSError)):
                detail += " | " + traceback.format_exc(limit=3).replace("\n", " ")
            result = SlideResult(path.stem, "failed", 0, time.perf_counter() - start, detail)
            tqdm.write(f"{path}: FAILED ({detail.split(' | ')[0]})")
        results.append(result)
        write_summary(part, results)
    overall.close()
    merge_summary(out_dir, summary, world)
    return results
