"""`slide extract` after a kill or a disk-full: its own stale temp files go, an unreadable NAME.h5
(0 bytes, truncated) is redone and the summary says so; other files are left alone."""
from __future__ import annotations

import shutil

import h5py

from openmusk.slide.config import ExtractConfig
from openmusk.slide.pipeline import extract_features
from openmusk.slide.summary import read_summary


def _config() -> ExtractConfig:
    """A learning-free encoder on a plain 1000 px image: a few tiles, fast."""
    return ExtractConfig(encoder="color_stats", slide_mpp=0.5, num_workers=0, batch_size=8)


def test_stale_temps_and_unreadable_outputs_are_redone(real_dir, tmp_path):
    slides, out = tmp_path / "slides", tmp_path / "features"
    slides.mkdir()
    for name in ("a", "b"):
        shutil.copy(real_dir / "he_tumor_1000px.png", slides / f"{name}.png")
    (out / "coords").mkdir(parents=True)
    mine = [out / ".a.h5.k1ll3d.h5.tmp", out / "coords" / ".a.h5.x9.h5.tmp"]   # a killed run's
    others = [out / ".zz.h5.live.h5.tmp", out / "notes.txt"]                   # not this slide's
    for p in mine + others:
        p.write_bytes(b"partial")
    (out / "b.h5").write_bytes(b"")                                            # disk-full aftermath

    rows = {r.slide: r for r in extract_features(slides, out, _config(), progress=False)}
    assert {k: r.status for k, r in rows.items()} == {"a": "done", "b": "done"}
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    assert "removed stale temp file" in rows["a"].error
    assert "redone: b.h5 was unreadable" in rows["b"].error
    summary = {r.slide: r for r in read_summary(out)}
    assert "redone: b.h5" in summary["b"].error and summary["b"].status == "done"
    with h5py.File(out / "b.h5") as f:
        assert len(f["features"]) == rows["b"].tiles > 0

    data = (out / "a.h5").read_bytes()                                         # an interrupted copy
    (out / "a.h5").write_bytes(data[: len(data) // 3])
    rows = {r.slide: r for r in extract_features(slides, out, _config(), progress=False)}
    assert (rows["a"].status, rows["b"].status) == ("done", "skipped")
    assert "redone: a.h5 was unreadable" in rows["a"].error
    with h5py.File(out / "a.h5") as f:
        assert len(f["features"]) == rows["a"].tiles > 0
