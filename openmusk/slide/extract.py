"""Feature extraction over a folder of slides: segment, tile, encode, one HDF5 file per slide.

The output is the TRIDENT/CLAM layout MIL code already reads (``features`` (N, D) and ``coords``
int64 (N, 2), level-0 top-left, with attributes). Each slide is written to a temporary file and
renamed, so a killed run leaves no partial file; a rerun skips finished slides; an unreadable
slide is recorded in the summary CSV and the run goes on. Under ``torchrun`` every rank takes every
world-th slide and writes its own summary part, merged into ``summary.csv`` under a file lock.
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import os
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openmusk.core import dist
from openmusk.core.io import atomic_path, write_json
from openmusk.slide.reader import Slide, SlideError, list_slides, open_slide
from openmusk.slide.tiling import TilingConfig, Tiles, config_matches, read_coords, tile_slide, write_coords
from openmusk.slide.tissue import ClassicalSegmenter, segment_tissue

__all__ = ["ExtractConfig", "SlideResult", "TileDataset", "extract_features", "extract_slide",
           "load_encoder", "read_features", "read_summary", "load_extract_config", "autocast_for", "tile_slides",
           "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ("slide", "status", "tiles", "seconds", "error")


@dataclass
class ExtractConfig:
    """Everything one extraction run needs; the YAML file has exactly these keys (nested sections)."""

    model: str | None = None         # config name; default: read from the weights (random: large)
    weights: str | None = "hf_hub:xiangjx/musk"   # None: random weights (tests, benchmarks)
    multiscale: bool = True          # 2D-d multiscale MUSK features (2048 for the released model)
    batch_size: int = 32
    num_workers: int = 2             # DataLoader processes reading tiles
    precision: str = "auto"          # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str | None = None        # default: cuda:LOCAL_RANK when available, else cpu
    slide_mpp: float | None = None   # level-0 µm/px for files that state none (PNG/JPEG, some TIFFs)
    segment_mpp: float = 8.0         # thumbnail resolution for tissue segmentation
    tiling: TilingConfig = field(default_factory=TilingConfig)
    segmenter: ClassicalSegmenter = field(default_factory=ClassicalSegmenter)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {self.batch_size}, "
                             f"{self.num_workers}")


@dataclass
class SlideResult:
    """One row of the summary: what happened to one slide."""

    slide: str
    status: str          # done | skipped | no_tissue | failed
    tiles: int = 0
    seconds: float = 0.0
    error: str = ""


def load_extract_config(path: str | os.PathLike) -> ExtractConfig:
    """Read an :class:`ExtractConfig` from YAML; unknown keys are an error naming the file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    return _from_dict(ExtractConfig, data, str(path))


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        default = fields[k].default_factory if fields[k].default_factory is not dataclasses.MISSING else None
        nested = default() if default is not None else None
        if dataclasses.is_dataclass(nested):
            kwargs[k] = _from_dict(type(nested), v, f"{where}:{k}")
        elif isinstance(v, list):
            kwargs[k] = tuple(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------- tiles
class TileDataset(Dataset):
    """Tiles of one slide read at the tiling mpp, as uint8 (3, S, S) tensors (S = model input size).

    Each DataLoader worker opens its own slide handle on first use.
    """

    def __init__(self, slide_path: str | os.PathLike, coords: np.ndarray, mpp: float, tile_size: int,
                 out_size: int | None = None, slide_mpp: float | None = None):
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.mpp, self.tile_size = float(mpp), int(tile_size)
        self.out_size = int(out_size or tile_size)
        self.slide_mpp = slide_mpp
        self._slide: Slide | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.coords)

    def _open(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path, default_mpp=self.slide_mpp)
            self._pid = os.getpid()
        return self._slide

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = (int(v) for v in self.coords[i])
        tile = self._open().read_region((x, y), (self.tile_size, self.tile_size), self.mpp)
        if self.out_size != self.tile_size:
            tile = tile.resize((self.out_size, self.out_size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(tile).copy()).permute(2, 0, 1), i

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"] = None
        return state


def normalize_tiles(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [-1, 1]: MUSK's mean = std = 0.5 normalisation."""
    return batch.float().div_(127.5).sub_(1.0)


# -------------------------------------------------------------------------------------- encoder
def load_encoder(config: ExtractConfig, device: torch.device | str | None = None) -> torch.nn.Module:
    """The MUSK model named by ``config`` (released weights when ``config.weights`` is set)."""
    import openmusk

    device = torch.device(device) if device is not None else default_device(config)
    if config.weights:
        return openmusk.create_model(config.model, pretrained=config.weights, device=device)
    return openmusk.create_model(config.model or "musk_large_patch16_384", device=device)


def encoder_name(model: torch.nn.Module) -> str:
    """The named config the model's architecture matches (``musk_custom`` if none)."""
    import openmusk

    return next((n for n, c in openmusk.CONFIGS.items() if c == model.config), "musk_custom")


def default_device(config: ExtractConfig) -> torch.device:
    """The configured device, else this rank's GPU, else the CPU."""
    if config.device:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str) -> ContextManager:
    """Autocast context for ``precision`` on ``device``: bf16/fp16 where supported, else fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return nullcontext()
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use precision bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def encode_batch(model: torch.nn.Module, batch: torch.Tensor, multiscale: bool, device: torch.device,
                 precision: str) -> torch.Tensor:
    """Features (B, D or 2D) of a uint8 tile batch, float32 on the CPU."""
    x = normalize_tiles(batch.to(device, non_blocking=True))
    with torch.inference_mode(), autocast_for(device, precision):
        feats = model.encode_image(x, head=False, normalize=False, multiscale=multiscale)
    return feats.float().cpu()


# ---------------------------------------------------------------------------------- per slide
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


def extract_slide(slide_path: str | os.PathLike, out_dir: str | os.PathLike, model: torch.nn.Module,
                  config: ExtractConfig | None = None, progress: bool = True) -> SlideResult:
    """Extract one slide's features into ``out_dir/NAME.h5`` (skipped if it exists).

    Errors propagate; :func:`extract_features` turns them into summary rows.
    """
    config = config or ExtractConfig()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    name = Path(slide_path).stem
    target = out_dir / f"{name}.h5"
    if target.exists():
        with h5py.File(target, "r") as f:
            n = int(f["coords"].shape[0])
        return SlideResult(name, "skipped", n, 0.0)
    with open_slide(slide_path, default_mpp=config.slide_mpp) as slide:
        tiles = tiles_for_slide(slide, out_dir, config)
    if len(tiles) == 0:
        return SlideResult(name, "no_tissue", 0, time.perf_counter() - start)
    device = next(model.parameters()).device
    img_size = int(model.config.img_size)
    dataset = TileDataset(slide_path, tiles.coords, config.tiling.mpp, config.tiling.tile_size,
                          out_size=img_size, slide_mpp=config.slide_mpp)
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    bar = tqdm(total=len(dataset), desc=name, unit="tile", leave=False, disable=not progress,
               position=1)
    written = 0
    with bar, atomic_path(target, suffix=".h5.tmp") as tmp, h5py.File(tmp, "w") as f:
        for batch, index in loader:
            feats = encode_batch(model, batch, config.multiscale, device, config.precision).numpy()
            if written == 0:
                feat_ds, coord_ds = _create_datasets(f, feats.shape[1], len(dataset))
            n = len(feats)
            feat_ds.resize(written + n, axis=0)
            coord_ds.resize(written + n, axis=0)
            feat_ds[written:written + n] = feats
            coord_ds[written:written + n] = tiles.coords[index.numpy()]
            written += n
            bar.update(n)
        _write_attrs(feat_ds, coord_ds, name, tiles, model, config)
    return SlideResult(name, "done", written, time.perf_counter() - start)


def _create_datasets(f: h5py.File, dim: int, total: int) -> tuple[h5py.Dataset, h5py.Dataset]:
    """Resizable, chunked ``features`` (0, dim) float32 and ``coords`` (0, 2) int64 datasets."""
    rows = max(1, min(total, 256))
    feats = f.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype=np.float32,
                             chunks=(rows, dim))
    coords = f.create_dataset("coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64,
                              chunks=(max(1, min(total, 4096)), 2))
    return feats, coords


def _write_attrs(feat_ds: h5py.Dataset, coord_ds: h5py.Dataset, name: str, tiles: Tiles,
                 model: torch.nn.Module, config: ExtractConfig) -> None:
    """The TRIDENT/CLAM attributes plus the encoder's identity (name, weights, config, version)."""
    import openmusk

    feat_ds.attrs["name"] = name
    feat_ds.attrs["encoder"] = encoder_name(model)
    feat_ds.attrs["encoder_weights"] = config.weights or "random"
    feat_ds.attrs["encoder_config"] = json.dumps(asdict(model.config))
    feat_ds.attrs["encoder_version"] = f"openmusk {openmusk.__version__}"
    feat_ds.attrs["multiscale"] = bool(config.multiscale)
    feat_ds.attrs["precision"] = config.precision
    for k, v in tiles.attrs.items():
        coord_ds.attrs[k] = v
    coord_ds.attrs["name"] = name


def read_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(features, coords, coords attributes)`` of a features file (ours, TRIDENT's or CLAM's)."""
    with h5py.File(path, "r") as f:
        for key in ("features", "coords"):
            if key not in f:
                raise ValueError(f"{path}: no {key!r} dataset (found {list(f.keys())})")
        feats, coords = f["features"][:], f["coords"][:]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f["coords"].attrs.items()}
    if len(feats) != len(coords):
        raise ValueError(f"{path}: {len(feats)} feature rows but {len(coords)} coords rows")
    return feats, coords, attrs


# --------------------------------------------------------------------------------- whole folder
def extract_features(slides: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                     config: ExtractConfig | None = None, model: torch.nn.Module | None = None,
                     progress: bool = True) -> list[SlideResult]:
    """Extract every slide (a folder or a list of paths) into ``out_dir``; returns this rank's rows.

    Under torchrun each rank takes every world-th slide; ``out_dir/summary.csv`` covers all ranks.
    """
    config = config or ExtractConfig()
    paths = _slide_paths(slides)
    dist.init_distributed()
    model = model if model is not None else load_encoder(config)
    return _run_folder(paths, Path(out_dir), "summary",
                       lambda p: extract_slide(p, out_dir, model, config, progress=progress), progress)


def tile_slides(slides: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                config: ExtractConfig | None = None, progress: bool = True) -> list[SlideResult]:
    """Segment and tile every slide: ``out_dir/coords/NAME.h5`` and ``out_dir/tissue/NAME.geojson``.

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

    dist.init_distributed()
    return _run_folder(_slide_paths(slides), out_dir, "tiling_summary", work, progress)


def _slide_paths(slides: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Slide paths from a folder or a list; names must be unique (they name the output files)."""
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
    _write_summary(part, results)
    overall = tqdm(dist.shard_items(paths), desc=f"slides (rank {rank}/{world})" if world > 1 else "slides",
                   unit="slide", disable=not progress, position=0)
    for path in overall:
        start = time.perf_counter()
        try:
            result = work(path)
        except Exception as e:  # one bad slide must not stop the others
            detail = f"{type(e).__name__}: {e}"
            if not isinstance(e, (SlideError, ValueError, OSError)):
                detail += " | " + traceback.format_exc(limit=3).replace("\n", " ")
            result = SlideResult(path.stem, "failed", 0, time.perf_counter() - start, detail)
            tqdm.write(f"{path}: FAILED ({detail.split(' | ')[0]})")
        results.append(result)
        _write_summary(part, results)
    overall.close()
    _merge_summary(out_dir, summary, world)
    return results


def _write_summary(path: Path, rows: list[SlideResult]) -> None:
    """Write summary rows as CSV, atomically."""
    with atomic_path(path, suffix=".csv.tmp") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_FIELDS)
        for r in rows:
            writer.writerow([r.slide, r.status, r.tiles, f"{r.seconds:.3f}", r.error])


def _merge_summary(out_dir: Path, summary: str, world: int) -> None:
    """Merge the rank parts of this world size into ``<summary>.csv`` under an exclusive lock.

    Every rank merges after writing its own part; the last one to take the lock sees them all.
    """
    with open(out_dir / f".{summary}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = []
        for part in sorted(out_dir.glob(f".{summary}.rank*-of-{world:05d}.csv")):
            rows.extend(read_summary(part))
        rows.sort(key=lambda r: r.slide)
        _write_summary(out_dir / f"{summary}.csv", rows)
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
