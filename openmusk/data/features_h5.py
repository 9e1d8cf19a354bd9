"""The per-slide features file: the one owner of its HDF5 schema (write, read, validate).

Layout (TRIDENT/CLAM, what users' MIL code already reads):

* ``features`` float32 (N, D), attributes naming the encoder that made it: ``encoder`` (registry
  name), ``encoder_name`` (the feature's name: ``musk_multiscale`` 2048-d or ``musk`` 1024-d for
  MUSK), ``encoder_spec`` (JSON of the factory arguments), ``encoder_weights``, ``feature_dim``,
  ``feature_kind``, ``precision``, ``encoder_version`` (openmusk version), ``name`` (slide).
* ``coords`` int64 (N, 2), level-0 top-left pixel of each tile, attributes ``patch_size``,
  ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``…
  with TRIDENT's meanings, or CLAM's (``patch_level``, ``patch_size`` at that level) in the CLAM
  layout; :func:`patch_size_level0` reads the tile side from either (see ``openmusk.slide.tiling``).

A coords-only file (tiling without encoding) has just ``coords``. Writers go to a temporary file
that is renamed into place, so a file that exists is complete. Readers accept TRIDENT's and CLAM's
files as well as ours; every error names the file. Other HDF5 outputs (feature caches, ``embed``)
use :func:`write_arrays`, the same atomic writer.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["SlideFeatures", "FeaturesFileError", "FeaturesWriter", "write_features", "read_features",
           "read_slide_features", "read_feature_rows", "features_shape", "check_features_file",
           "read_encoder_info", "write_coords_file", "read_coords_file", "write_arrays", "read_arrays", "read_attrs",
           "patch_size_level0"]


class FeaturesFileError(ValueError):
    """A features file that is missing, unreadable or not in the expected layout (named)."""


@dataclass
class SlideFeatures:
    """One slide's features, tile coordinates and the attributes of both datasets."""

    features: np.ndarray
    coords: np.ndarray
    coords_attrs: dict[str, Any] = field(default_factory=dict)
    features_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def encoder(self) -> str:
        """Registry name of the encoder that made the features ('' for foreign files)."""
        return str(self.features_attrs.get("encoder", ""))


def _h5():
    import h5py

    return h5py


def _plain_attrs(attrs: Any) -> dict[str, Any]:
    """HDF5 attributes as Python values (numpy scalars -> items, bytes -> str)."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        out[k] = v
    return out


def _set_attrs(obj: Any, attrs: Mapping[str, Any]) -> None:
    """Write attributes, JSON-encoding dicts and lists of mixed values."""
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, dict):
            v = json.dumps(v, sort_keys=True, default=str)
        obj.attrs[k] = v


# ------------------------------------------------------------------------------------ writing
class FeaturesWriter:
    """Stream a slide's features into ``path`` batch by batch; renamed into place on ``close``.

        with FeaturesWriter(path, dim, expected_rows=n, encoder_attrs=info) as w:
            for feats, coords in batches:
                w.append(feats, coords)

    Leaving the block with an exception deletes the temporary file: nothing half-written remains.
    """

    def __init__(self, path: str | os.PathLike, dim: int | None = None, expected_rows: int = 256,
                 features_attrs: Mapping[str, Any] | None = None,
                 coords_attrs: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.dim = dim
        self.expected_rows = max(1, int(expected_rows))
        self.features_attrs = dict(features_attrs or {})
        self.coords_attrs = dict(coords_attrs or {})
        self.rows = 0
        self._stack = ExitStack()
        self._file = None
        self._feats = self._coords = None

    def __enter__(self) -> "FeaturesWriter":
        from openmusk.core.io import atomic_path

        tmp = self._stack.enter_context(atomic_path(self.path, suffix=".h5.tmp"))
        self._file = self._stack.enter_context(_h5().File(tmp, "w"))
        return self

    def _create(self, dim: int) -> None:
        rows = min(self.expected_rows, 256)
        self._feats = self._file.create_dataset("features", shape=(0, dim), maxshape=(None, dim),
                                                dtype=np.float32, chunks=(rows, dim))
        self._coords = self._file.create_dataset("coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64,
                                                 chunks=(min(self.expected_rows, 4096), 2))
        self.dim = dim

    def append(self, features: np.ndarray, coords: np.ndarray) -> None:
        """Add rows: features (n, D) and their coords (n, 2)."""
        features = np.asarray(features, dtype=np.float32)
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        if features.ndim != 2 or len(features) != len(coords):
            raise FeaturesFileError(f"{self.path}: features {features.shape} and coords {coords.shape} "
                                    "must be (n, D) and (n, 2)")
        if self._feats is None:
            self._create(features.shape[1])
        elif features.shape[1] != self.dim:
            raise FeaturesFileError(f"{self.path}: features are {features.shape[1]}-d, earlier rows {self.dim}-d")
        n = len(features)
        self._feats.resize(self.rows + n, axis=0)
        self._coords.resize(self.rows + n, axis=0)
        self._feats[self.rows:self.rows + n] = features
        self._coords[self.rows:self.rows + n] = coords
        self.rows += n

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                if self._feats is None:
                    self._create(int(self.dim or 0))
                attrs = {"feature_dim": int(self.dim or 0), **self.features_attrs}
                _set_attrs(self._feats, attrs)
                _set_attrs(self._coords, self.coords_attrs)
        finally:
            self._stack.__exit__(exc_type, exc, tb)
        return False


def write_features(path: str | os.PathLike, features: np.ndarray, coords: np.ndarray,
                   features_attrs: Mapping[str, Any] | None = None,
                   coords_attrs: Mapping[str, Any] | None = None) -> Path:
    """Write a whole features file at once (atomically)."""
    features = np.asarray(features, dtype=np.float32)
    with FeaturesWriter(path, features.shape[1] if features.ndim == 2 else None, len(features),
                        features_attrs, coords_attrs) as w:
        w.append(features, coords)
    return Path(path)


def write_coords_file(path: str | os.PathLike, coords: np.ndarray, attrs: Mapping[str, Any]) -> Path:
    """A coords-only file (tiling done, nothing encoded yet), atomically."""
    from openmusk.core.io import atomic_path

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path, suffix=".h5.tmp") as tmp, _h5().File(tmp, "w") as f:
        ds = f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(max(1, min(len(coords), 4096)), 2))
        _set_attrs(ds, attrs)
    return Path(path)


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
                 dataset_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Any named arrays (lists of strings become UTF-8 string datasets) into one HDF5 file, atomically."""
    from openmusk.core.io import atomic_path

    h5py = _h5()
    with atomic_path(path, suffix=".h5.tmp") as tmp, h5py.File(tmp, "w") as f:
        for name, value in arrays.items():
            if isinstance(value, (list, tuple)) and (not value or isinstance(value[0], str)):
                f.create_dataset(name, data=np.array(list(value), dtype=object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=np.asarray(value))
        _set_attrs(f, attrs or {})
        for name, a in (dataset_attrs or {}).items():
            _set_attrs(f[name], a)
    return Path(path)


# ------------------------------------------------------------------------------------ reading
def _open(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise FeaturesFileError(f"{path}: features file not found")
    try:
        return _h5().File(path, "r")
    except OSError as e:
        raise FeaturesFileError(f"{path}: not a readable HDF5 file ({e})") from e


def _check_layout(f: Any, path: Any, need_coords: bool = True) -> tuple[int, int]:
    """(N, D) of an open file after checking its datasets; raises FeaturesFileError naming the file."""
    need = ("features", "coords") if need_coords else ("features",)
    missing = [k for k in need if k not in f]
    if missing:
        raise FeaturesFileError(f"{path}: needs dataset(s) {list(need)}, missing {missing} (found {list(f.keys())})")
    shape = f["features"].shape
    if len(shape) == 3 and shape[0] == 1:  # CLAM's pt->h5 exports (1, N, D)
        shape = shape[1:]
    if len(shape) != 2 or shape[0] == 0:
        raise FeaturesFileError(f"{path}: 'features' has shape {f['features'].shape}, expected (N>0, D)")
    if need_coords:
        cshape = f["coords"].shape
        cshape = cshape[1:] if len(cshape) == 3 and cshape[0] == 1 else cshape
        if cshape != (shape[0], 2):
            raise FeaturesFileError(f"{path}: 'coords' shape {f['coords'].shape} does not match 'features' "
                                    f"{f['features'].shape}")
    return int(shape[0]), int(shape[1])


def _squeeze(a: np.ndarray) -> np.ndarray:
    return a[0] if a.ndim == 3 and a.shape[0] == 1 else a


def features_shape(path: str | os.PathLike, need_coords: bool = True) -> tuple[int, int]:
    """(N, D) of a features file after validating its layout."""
    with _open(path) as f:
        return _check_layout(f, path, need_coords)


def check_features_file(path: str | os.PathLike, dim: int | None = None, need_coords: bool = True) -> str | None:
    """Why ``path`` cannot be used as a features file (``None`` if it can); ``dim`` must match if given."""
    try:
        _, d = features_shape(path, need_coords)
    except FeaturesFileError as e:
        return str(e).split(": ", 1)[-1]
    if dim is not None and d != dim:
        return f"feature dim {d} differs from the expected {dim}"
    return None


def read_slide_features(path: str | os.PathLike, need_coords: bool = True) -> SlideFeatures:
    """Features, coords and both datasets' attributes of one file (ours, TRIDENT's or CLAM's)."""
    with _open(path) as f:
        _check_layout(f, path, need_coords)
        feats = _squeeze(f["features"][:]).astype(np.float32, copy=False)
        coords = (_squeeze(f["coords"][:]).astype(np.int64, copy=False) if "coords" in f
                  else np.zeros((len(feats), 2), np.int64))
        cattrs = _plain_attrs(f["coords"].attrs) if "coords" in f else {}
        fattrs = _plain_attrs(f["features"].attrs)
    return SlideFeatures(feats, coords, cattrs, fattrs)


def read_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(features, coords, coords attributes)`` of a features file."""
    s = read_slide_features(path)
    return s.features, s.coords, s.coords_attrs


def read_feature_rows(path: str | os.PathLike, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Features of some rows (sorted indices) without reading the whole file; all rows when None."""
    with _open(path) as f:
        n, _ = _check_layout(f, path, need_coords=False)
        ds = f["features"]
        squeeze = ds.ndim == 3
        if rows is None or len(rows) == n:
            out = ds[0] if squeeze else ds[:]
        else:
            idx = np.asarray(rows, dtype=np.int64)
            out = ds[0, idx] if squeeze else ds[idx]
    return np.asarray(out, dtype=np.float32)


def read_encoder_info(path: str | os.PathLike) -> dict[str, Any]:
    """Which encoder made a features file: the ``features`` attributes (empty for foreign files)."""
    with _open(path) as f:
        if "features" not in f:
            raise FeaturesFileError(f"{path}: no 'features' dataset (found {list(f.keys())})")
        info = _plain_attrs(f["features"].attrs)
    if isinstance(info.get("encoder_spec"), str):
        try:
            info["encoder_spec"] = json.loads(info["encoder_spec"])
        except json.JSONDecodeError:
            pass
    return info


def read_coords_file(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Coords (N, 2) int64 and their attributes from a coords-only or features file."""
    path = Path(path)
    try:
        with _h5().File(path, "r") as f:
            if "coords" not in f:
                raise FeaturesFileError(f"{path}: no 'coords' dataset (found {list(f.keys())})")
            coords = np.asarray(_squeeze(f["coords"][:]), dtype=np.int64).reshape(-1, 2)
            attrs = _plain_attrs(f["coords"].attrs)
    except OSError as e:
        raise FeaturesFileError(f"{path}: not a readable HDF5 coords file ({e})") from e
    return coords, attrs


def patch_size_level0(attrs: Mapping[str, Any], level_downsamples: Sequence[float] | None = None,
                      coords: np.ndarray | None = None, where: Any = "coords") -> int:
    """Side of one tile in level-0 pixels, from whichever tool wrote the coords attributes.

    * openmusk / TRIDENT: ``patch_size_level0``.
    * CLAM (``patch_level``, ``patch_size`` = side **at** ``patch_level``): ``patch_size`` times that
      level's downsample (its ``downsample`` attribute, else ``level_downsamples``), as CLAM's
      ``StitchCoords`` computes it.
    * TRIDENT without it: ``round(patch_size * level0_magnification / target_magnification)`` (its patcher).
    * ``patch_size`` alone: a side at level 0 (CLAM's default ``patch_level``).
    * No attributes (CLAM's features files): the grid step of the coords, when they lie on a grid.
    """
    if "patch_size_level0" in attrs:
        return int(attrs["patch_size_level0"])
    if "patch_level" in attrs and "patch_size" in attrs:
        level = int(attrs["patch_level"])
        if "downsample" in attrs:
            ds = float(np.ravel(attrs["downsample"])[0])
        elif level == 0:
            ds = 1.0
        elif level_downsamples is not None and level < len(level_downsamples):
            ds = float(level_downsamples[level])
        else:
            raise FeaturesFileError(f"{where}: CLAM coords at patch_level {level} need the slide's level "
                                    "downsamples to size the tiles")
        return int(round(float(attrs["patch_size"]) * ds))
    if {"patch_size", "level0_magnification", "target_magnification"} <= set(attrs):
        return int(round(float(attrs["patch_size"]) * float(attrs["level0_magnification"])
                         / float(attrs["target_magnification"])))
    if "patch_size" in attrs:  # no level given: a side at level 0, as CLAM's default patch_level
        return int(attrs["patch_size"])
    if coords is not None and len(coords) > 1:
        steps = [np.diff(np.unique(np.asarray(coords)[:, i])) for i in (0, 1)]
        steps = [st[st > 0].min() for st in steps if (st > 0).any()]
        if steps:
            return int(min(steps))
    raise FeaturesFileError(f"{where}: cannot tell the tile size: no 'patch_size_level0', no CLAM "
                            "'patch_level' + 'patch_size', no TRIDENT magnifications, and the coords form no grid")


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """File-level attributes of an HDF5 file written by :func:`write_arrays`."""
    with _open(path) as f:
        return _plain_attrs(f.attrs)


def read_arrays(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Named arrays of a file written by :func:`write_arrays` (all when ``names`` is None);
    string datasets come back as lists of str. A missing name raises FeaturesFileError."""
    h5py = _h5()
    with _open(path) as f:
        missing = [n for n in names or () if n not in f]
        if missing:
            raise FeaturesFileError(f"{path}: missing dataset(s) {missing} (found {list(f.keys())})")
        out: dict[str, Any] = {}
        for name in names if names is not None else list(f.keys()):
            ds = f[name]
            out[name] = list(ds.asstr()[:]) if h5py.check_string_dtype(ds.dtype) else ds[:]
        return out
