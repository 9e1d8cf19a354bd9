"""One slide's tiles -> one features file, with any encoder from :mod:`openmusk.encoders`.

Tiles are read at the tiling resolution in DataLoader workers (each opens its own slide handle),
passed through the encoder's worker transform (uint8, MUSK) or its transform (any other), which
also resize them to its input, then encoded batch by batch as ``probe``
features (unnormalised, MUSK's multiscale CLS by default) and streamed into the TRIDENT/CLAM
layout by :class:`~openmusk.data.features_h5.FeaturesWriter`, which renames a finished file into
place.
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

from openmusk.core.io import write_json
from openmusk.data.features_h5 import FeaturesWriter, features_shape
from openmusk.slide.config import ExtractConfig
from openmusk.slide.reader import Slide, open_slide
from openmusk.slide.summary import SlideResult
from openmusk.slide.tiling import Tiles, config_matches, read_coords, tile_slide, write_coords
from openmusk.slide.tissue import segment_tissue

__all__ = ["TileDataset", "load_slide_encoder", "tiles_for_slide", "coords_path", "extract_slide"]


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


def coords_path(out_dir: Path, name: str) -> Path:
    """Where the coords-only file of slide ``name`` lives."""
    return out_dir / "coords" / f"{name}.h5"


def tiles_for_slide(slide: Slide, out_dir: Path, config: ExtractConfig) -> Tiles:
    """The slide's tiles: reused from its coords file when cut with the same settings, else made."""
    path = coords_path(out_dir, slide.name)
    if path.exists():
        tiles = read_coords(path)
        if config_matches(tiles, config.tiling):
            return tiles
    tissue, _ = segment_tissue(slide, config.segmenter, mpp=config.segment_mpp)
    tiles = tile_slide(slide, tissue, config.tiling)
    write_json(out_dir / "tissue" / f"{slide.name}.geojson", tissue.geojson())
    write_coords(path, tiles)
    return tiles


def _model_attrs(encoder: Any) -> dict[str, Any]:
    """MUSK's architecture (``encoder_config`` JSON) and ``multiscale``, for encoders that have them."""
    attrs: dict[str, Any] = {}
    config = getattr(getattr(encoder, "model", None), "config", None)
    if dataclasses.is_dataclass(config):
        attrs["encoder_config"] = json.dumps(dataclasses.asdict(config))
    if hasattr(encoder, "multiscale"):
        attrs["multiscale"] = bool(encoder.multiscale)
    return attrs


def extract_slide(slide_path: str | os.PathLike, out_dir: str | os.PathLike, encoder: Any,
                  config: ExtractConfig | None = None, progress: bool = True) -> SlideResult:
    """Extract one slide's features into ``out_dir/NAME.h5`` (skipped if it exists).

    Errors propagate; :func:`~openmusk.slide.pipeline.extract_features` turns them into summary rows.
    """
    from openmusk.encoders import encoder_info

    config = config or ExtractConfig()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    name = Path(slide_path).stem
    target = out_dir / f"{name}.h5"
    if target.exists():
        return SlideResult(name, "skipped", features_shape(target)[0], 0.0)
    with open_slide(slide_path, default_mpp=config.slide_mpp) as slide:
        tiles = tiles_for_slide(slide, out_dir, config)
    if len(tiles) == 0:
        return SlideResult(name, "no_tissue", 0, time.perf_counter() - start)
    two_stage = getattr(encoder, "worker_transform", None) is not None
    dataset = TileDataset(slide_path, tiles.coords, config.tiling.mpp, config.tiling.tile_size,
                          slide_mpp=config.slide_mpp,
                          transform=encoder.worker_transform if two_stage else encoder.transform)
    device = torch.device(getattr(encoder, "device", "cpu"))
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    attrs = {"name": name, **encoder_info(encoder, "probe"), **_model_attrs(encoder)}
    bar = tqdm(total=len(dataset), desc=name, unit="tile", leave=False, disable=not progress, position=1)
    with bar, FeaturesWriter(target, expected_rows=len(dataset), features_attrs=attrs,
                             coords_attrs={**tiles.attrs, "name": name}) as writer:
        for batch, index in loader:
            with torch.inference_mode():
                x = encoder.batch_transform(batch) if two_stage else batch
                feats = encoder.encode_image(x, kind="probe", normalize=False)
            writer.append(feats.float().cpu().numpy(), tiles.coords[index.numpy()])
            bar.update(len(index))
    return SlideResult(name, "done", writer.rows, time.perf_counter() - start)
