"""One slide's tiles -> one features file, with any encoder from :mod:`openmusk.encoders`.

Tiles are read at the tiling resolution in DataLoader workers (each opens its own slide handle),
passed through the encoder's worker transform (uint8, MUSK) or its transform (any other), which
also resize them to its input, then encoded batch by batch as ``probe``
features (unnormalised, MUSK's multiscale CLS by default) and streamed into the TRIDENT/CLAM
layout by :class:`~openmusk.data.features_h5.FeaturesWriter`, which renames a finished file into
place.

Output layouts (``ExtractConfig.layout``), so the other tools' commands run on our folder as is:

* ``openmusk``: ``OUT/NAME.h5``, ``OUT/coords/NAME.h5``, ``OUT/tissue/NAME.geojson``.
* ``trident``: ``OUT/features_<encoder>/NAME.h5``, ``OUT/patches/NAME_patches.h5``,
  ``OUT/contours_geojson/NAME.geojson`` (TRIDENT's ``Processor`` layout inside its coords folder).
* ``clam``: ``OUT/h5_files/NAME.h5``, ``OUT/pt_files/NAME.pt`` (what CLAM's ``main.py`` reads),
  ``OUT/patches/NAME.h5`` with CLAM's coords attributes (:func:`~openmusk.slide.tiling.clam_attrs`).

The encoder name recorded (``encoder_name``, and the TRIDENT folder) says which MUSK feature it is:
``musk_multiscale`` (2D-wide, the paper's default) or ``musk`` for the single-scale D-wide CLS
(what TRIDENT calls ``musk``), so a 2048-d file is never taken for TRIDENT's 1024-d one.
``ExtractConfig.coords_dir`` encodes exactly the tiles another tool chose (its files are only read).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openmusk.data.features_h5 import FeaturesFileError, FeaturesWriter, features_shape
from openmusk.slide.config import ExtractConfig
from openmusk.slide.reader import Slide, open_slide
from openmusk.slide.summary import SlideResult
from openmusk.slide.geojson import write_geojson
from openmusk.slide.tiling import (Tiles, clam_attrs, config_matches, is_openmusk_coords, read_coords, tile_slide,
                                   write_coords)
from openmusk.slide.tissue import segment_tissue

__all__ = ["TileDataset", "load_slide_encoder", "tiles_for_slide", "coords_path", "features_path",
           "feature_name", "foreign_coords_path", "extract_slide", "LAYOUTS"]

LAYOUTS = ("openmusk", "trident", "clam")


class TileDataset(Dataset):
    """Tiles of one slide read at the tiling mpp and passed through ``transform`` (the encoder's,
    which also sizes them for its input; default: the tile as a uint8 (S, S, 3) tensor); items are
    ``(tile, index)``.

    Each DataLoader worker opens its own slide handle on first use.
    """

    def __init__(self, slide_path: str | os.PathLike, coords: np.ndarray, mpp: float, tile_size: int,
                 slide_mpp: float | None = None, transform: Callable[[Image.Image], Any] | None = None):
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.mpp, self.tile_size = float(mpp), int(tile_size)
        self.slide_mpp = slide_mpp
        self.transform = transform
        self._slide: Slide | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.coords)

    def _open(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, default_mpp=self.slide_mpp)
            self._pid = os.getpid()
        return self._slide

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y = (int(v) for v in self.coords[i])
        tile = self._open().read_region((x, y), (self.tile_size, self.tile_size), self.mpp)
        if self.transform is not None:
            return self.transform(tile), i
        return torch.from_numpy(np.asarray(tile).copy()), i

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"] = None
        return state


def load_slide_encoder(config: ExtractConfig) -> Any:
    """The encoder ``config`` names, on its device and precision."""
    from openmusk.encoders import load_encoder

    name, kwargs = config.encoder_args()
    return load_encoder(name, device=config.device, precision=config.precision, **kwargs)


def coords_path(out_dir: Path, name: str, layout: str = "openmusk") -> Path:
    """Where the coords-only file of slide ``name`` lives in ``layout``."""
    return {"openmusk": out_dir / "coords" / f"{name}.h5", "trident": out_dir / "patches" / f"{name}_patches.h5",
            "clam": out_dir / "patches" / f"{name}.h5"}[_check_layout(layout)]


def features_path(out_dir: Path, name: str, layout: str = "openmusk", encoder_name: str = "musk") -> Path:
    """Where the features file of slide ``name`` lives in ``layout`` (TRIDENT's names the encoder)."""
    return {"openmusk": out_dir / f"{name}.h5", "trident": out_dir / f"features_{encoder_name}" / f"{name}.h5",
            "clam": out_dir / "h5_files" / f"{name}.h5"}[_check_layout(layout)]


def _tissue_path(out_dir: Path, name: str, layout: str) -> Path:
    return out_dir / ("contours_geojson" if layout == "trident" else "tissue") / f"{name}.geojson"


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def feature_name(encoder: Any) -> str:
    """The name recorded for an encoder's features: ``musk_multiscale`` for MUSK's 2D-wide multiscale
    feature, ``musk`` for its single-scale CLS (TRIDENT's name), else the encoder's name."""
    name = str(getattr(encoder, "name", type(encoder).__name__))
    if name in ("musk", "musk_singlescale") and hasattr(encoder, "multiscale"):
        return "musk_multiscale" if encoder.multiscale else "musk"
    return name


def foreign_coords_path(coords_dir: str | os.PathLike, name: str) -> Path:
    """Another tool's coords file for slide ``name`` in ``coords_dir``: ``NAME.h5`` (CLAM, ours) or
    ``NAME_patches.h5`` (TRIDENT), directly or under ``patches/`` or ``coords/``."""
    root = Path(coords_dir)
    for folder in (root, root / "patches", root / "coords"):
        for fname in (f"{name}.h5", f"{name}_patches.h5"):
            if (folder / fname).is_file():
                return folder / fname
    raise FileNotFoundError(f"{root}: no coords file for slide {name!r} ({name}.h5 or {name}_patches.h5, "
                            "directly or under patches/ or coords/)")


def tiles_for_slide(slide: Slide, out_dir: Path, config: ExtractConfig) -> Tiles:
    """The slide's tiles: another tool's from ``config.coords_dir``; else reused from our coords file
    when cut with the same settings, else made. A coords file we did not write is never replaced."""
    if config.coords_dir is not None:
        return read_coords(foreign_coords_path(config.coords_dir, slide.name), slide.level_downsamples)
    path = coords_path(out_dir, slide.name, config.layout)
    if path.exists():
        tiles = read_coords(path, slide.level_downsamples)
        if config_matches(tiles, config.tiling):
            return tiles
        if not is_openmusk_coords(tiles.attrs):
            raise FeaturesFileError(f"{path}: coords written by another tool; openmusk does not replace it. "
                                    f"To encode exactly its tiles pass --coords-dir {path.parent}; to tile "
                                    "anew use another --out")
    tissue, _ = segment_tissue(slide, config.segmenter, mpp=config.segment_mpp)
    tiles = tile_slide(slide, tissue, config.tiling)
    write_geojson(_tissue_path(out_dir, slide.name, config.layout), tissue.geojson()["features"],
                  bounds=slide.dimensions)
    write_coords(path, Tiles(tiles.coords, clam_attrs(tiles.attrs)) if config.layout == "clam" else tiles)
    return tiles


def _model_attrs(encoder: Any) -> dict[str, Any]:
    """MUSK's architecture (``encoder_config`` JSON) and ``multiscale``, for encoders that have them."""
    attrs: dict[str, Any] = {"encoder_name": feature_name(encoder)}
    config = getattr(getattr(encoder, "model", None), "config", None)
    if dataclasses.is_dataclass(config):
        attrs["encoder_config"] = json.dumps(dataclasses.asdict(config))
    if hasattr(encoder, "multiscale"):
        attrs["multiscale"] = bool(encoder.multiscale)
    return attrs


def extract_slide(slide_path: str | os.PathLike, out_dir: str | os.PathLike, encoder: Any,
                  config: ExtractConfig | None = None, progress: bool = True) -> SlideResult:
    """Extract one slide's features into ``out_dir`` in ``config.layout`` (skipped if the file exists
    with this encoder's width; another width is an error naming both).

    Errors propagate; :func:`~openmusk.slide.pipeline.extract_features` turns them into summary rows.
    """
    from openmusk.encoders import encoder_info

    config = config or ExtractConfig()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    name = Path(slide_path).stem
    label = feature_name(encoder)
    target = features_path(out_dir, name, config.layout, label)
    if target.exists():
        rows, width = features_shape(target)
        expected = encoder.dim("probe") if hasattr(encoder, "dim") else width
        if width != expected:
            raise FeaturesFileError(f"{target}: holds {width}-d features but this run's encoder {label} makes "
                                    f"{expected}-d ones; use another --out (or delete the file) rather than mix them")
        if config.layout == "clam" and not (out_dir / "pt_files" / f"{name}.pt").exists():
            _write_clam_pt(target, out_dir / "pt_files" / f"{name}.pt")   # a run killed between the two
        return SlideResult(name, "skipped", rows, 0.0)
    with open_slide(slide_path, default_mpp=config.slide_mpp) as slide:
        tiles = tiles_for_slide(slide, out_dir, config)
        read_mpp = config.tiling.mpp   # our tiles; another tool's: read exactly their level-0 square
        if config.coords_dir is not None:
            read_mpp = slide.mpp * tiles.patch_size_level0 / config.tiling.tile_size
    if len(tiles) == 0:
        return SlideResult(name, "no_tissue", 0, time.perf_counter() - start)
    coords_attrs = tiles.attrs   # CLAM's own meanings in its layout, whoever cut the tiles
    if config.layout == "clam" and "patch_level" not in coords_attrs:
        coords_attrs = clam_attrs(coords_attrs)
    two_stage = getattr(encoder, "worker_transform", None) is not None
    dataset = TileDataset(slide_path, tiles.coords, read_mpp, config.tiling.tile_size,
                          slide_mpp=config.slide_mpp,
                          transform=encoder.worker_transform if two_stage else encoder.transform)
    device = torch.device(getattr(encoder, "device", "cpu"))
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    attrs = {"name": name, **encoder_info(encoder, "probe"), **_model_attrs(encoder)}
    bar = tqdm(total=len(dataset), desc=name, unit="tile", leave=False, disable=not progress, position=1)
    with bar, FeaturesWriter(target, expected_rows=len(dataset), features_attrs=attrs,
                             coords_attrs={**coords_attrs, "name": name}) as writer:
        for batch, index in loader:
            with torch.inference_mode():
                x = encoder.batch_transform(batch) if two_stage else batch
                feats = encoder.encode_image(x, kind="probe", normalize=False)
            writer.append(feats.float().cpu().numpy(), tiles.coords[index.numpy()])
            bar.update(len(index))
    if config.layout == "clam":
        _write_clam_pt(target, out_dir / "pt_files" / f"{name}.pt")
    return SlideResult(name, "done", writer.rows, time.perf_counter() - start)


def _write_clam_pt(h5_path: Path, pt_path: Path) -> None:
    """CLAM's ``pt_files/NAME.pt``: the (N, D) float32 features tensor, what its ``main.py`` loads."""
    from openmusk.core.io import atomic_path
    from openmusk.data.features_h5 import read_feature_rows

    with atomic_path(pt_path, suffix=".pt.tmp") as tmp:
        torch.save(torch.from_numpy(read_feature_rows(h5_path)), tmp)
