"""The per-slide features file: one schema, written atomically, read back with its encoder."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from openmusk.data import features_h5 as F


def test_streamed_file_round_trips_with_encoder_attributes(tmp_path):
    rng = np.random.default_rng(0)
    feats, coords = rng.normal(size=(10, 6)).astype(np.float32), rng.integers(0, 9999, (10, 2))
    path = tmp_path / "s1.h5"
    info = {"encoder": "musk", "encoder_spec": {"encoder": "musk", "weights": "w.safetensors"}, "precision": "fp32"}
    with F.FeaturesWriter(path, expected_rows=10, features_attrs=info, coords_attrs={"patch_size": 384}) as w:
        w.append(feats[:4], coords[:4])
        w.append(feats[4:], coords[4:])
    s = F.read_slide_features(path)
    np.testing.assert_array_equal(s.features, feats)
    np.testing.assert_array_equal(s.coords, coords)
    assert s.coords.dtype == np.int64 and s.coords_attrs["patch_size"] == 384
    assert s.encoder == "musk" and s.features_attrs["feature_dim"] == 6
    assert F.read_encoder_info(path)["encoder_spec"] == {"encoder": "musk", "weights": "w.safetensors"}
    np.testing.assert_array_equal(F.read_feature_rows(path, [1, 7]), feats[[1, 7]])
    assert F.features_shape(path) == (10, 6)
    with h5py.File(path) as f:  # TRIDENT/CLAM layout: the two datasets MIL code reads
        assert set(f.keys()) == {"features", "coords"}


def test_a_failure_midway_leaves_no_file(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with F.FeaturesWriter(path) as w:
            w.append(np.ones((2, 3)), np.zeros((2, 2)))
            raise RuntimeError("killed")
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(F.FeaturesFileError, match="3-d, earlier rows 4-d"):
        with F.FeaturesWriter(path) as w:
            w.append(np.ones((2, 4)), np.zeros((2, 2)))
            w.append(np.ones((2, 3)), np.zeros((2, 2)))
    assert not path.exists()


def test_foreign_layouts_and_bad_files_are_named(tmp_path):
    clam = tmp_path / "clam.h5"  # CLAM's create_features writes (1, N, D) when converted from .pt
    with h5py.File(clam, "w") as f:
        f["features"] = np.ones((1, 5, 3), np.float32)
        f["coords"] = np.zeros((1, 5, 2), np.int64)
    feats, coords, _ = F.read_features(clam)
    assert feats.shape == (5, 3) and coords.shape == (5, 2)
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["features"] = np.ones((4, 3), np.float32)
        f["coords"] = np.zeros((3, 2), np.int64)
    assert "does not match" in F.check_features_file(bad)
    assert "differs from the expected 7" in F.check_features_file(clam, dim=7)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(F.FeaturesFileError, match=f"{junk}: not a readable HDF5 file"):
        F.read_features(junk)
    with pytest.raises(F.FeaturesFileError, match="features file not found"):
        F.read_features(tmp_path / "none.h5")
    assert F.check_features_file(tmp_path / "none.h5") == "features file not found"


def test_coords_files_and_generic_arrays(tmp_path):
    c = np.array([[0, 0], [384, 0]])
    F.write_coords_file(tmp_path / "c.h5", c, {"patch_size_level0": 384, "name": "s"})
    coords, attrs = F.read_coords_file(tmp_path / "c.h5")
    np.testing.assert_array_equal(coords, c)
    assert attrs == {"patch_size_level0": 384, "name": "s"}
    F.write_arrays(tmp_path / "a.h5", {"features": np.eye(2), "names": ["a", "b"]}, {"kind": "text"})
    with h5py.File(tmp_path / "a.h5") as f:
        assert [n.decode() for n in f["names"][:]] == ["a", "b"]
    assert F.read_attrs(tmp_path / "a.h5") == {"kind": "text"}
