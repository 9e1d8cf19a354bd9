"""Our shards and the `webdataset` library agree both ways: it reads what we write (ints, strings,
JSON, PIL images, arrays, gzipped shards, brace lists) and we read what it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from openmusk.data.datasets import ShardDataset
from openmusk.data.shards import ShardWriter, iter_tar_samples, list_shards


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


def _samples(n: int) -> list[dict]:
    return [{"__key__": f"s{i:02d}", "cls": i % 3, "txt": f"tile {i} ü", "json": {"slide": "A", "x": i},
             "png": _image(i), "npy": np.arange(i, i + 4, dtype=np.float32)} for i in range(n)]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_webdataset_reads_what_we_write(tmp_path, suffix):
    samples = _samples(5)
    with ShardWriter(str(tmp_path / f"s-%03d{suffix}"), maxcount=2) as w:
        for s in samples:
            w.write(s)
    assert [p.name for p in list_shards(tmp_path)] == [f"s-{i:03d}{suffix}" for i in range(3)]
    url = str(tmp_path / f"s-{{000..002}}{suffix}")
    got = list(wds.WebDataset(url, shardshuffle=False).decode("pil"))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        assert g["cls"] == s["cls"] and g["txt"] == s["txt"] and g["json"] == s["json"]
        assert np.array_equal(np.asarray(g["png"]), np.asarray(s["png"]))   # PNG is lossless
        assert np.array_equal(g["npy"], s["npy"])
    # the old writer stored {"cls": 3} as three NUL bytes; now it is the digit webdataset expects
    raw = next(iter_tar_samples(tmp_path / f"s-000{suffix}"))
    assert raw["cls"] == b"0" and json.loads(raw["json"]) == {"slide": "A", "x": 0}


def test_we_read_what_webdataset_writes(tmp_path):
    samples = _samples(6)
    (tmp_path / "a").mkdir()
    with wds.ShardWriter(str(tmp_path / "a" / "w-%03d.tar"), maxcount=3, verbose=0) as w:
        for s in samples[:3] + samples[3:]:
            w.write(s)
    with wds.TarWriter(str(tmp_path / "a" / "z-000.tar.gz")) as w:
        w.write({**samples[0], "__key__": "gz0"})
    brace = str(tmp_path / "a" / "w-{000..001}.tar")
    joined = f"{tmp_path / 'a' / 'w-000.tar'}::{tmp_path / 'a' / 'w-001.tar'}"
    assert list_shards(brace) == list_shards(joined) == list_shards(tmp_path / "a")[:2]
    assert [p.name for p in list_shards(str(tmp_path / "a" / "{w-001.tar,z-000.tar.gz}"))] == [
        "w-001.tar", "z-000.tar.gz"]
    assert [p.name for p in list_shards(tmp_path / "a")] == ["w-000.tar", "w-001.tar", "z-000.tar.gz"]
    read = [s for p in list_shards(tmp_path / "a") for s in iter_tar_samples(p)]
    assert [r["__key__"] for r in read] == [s["__key__"] for s in samples] + ["gz0"]
    assert int(read[4]["cls"]) == samples[4]["cls"] and read[4]["txt"].decode() == samples[4]["txt"]
    ds = ShardDataset(tmp_path / "a", classes=["0", "1", "2"])
    assert ds.labels == [s["cls"] for s in samples] + [0]
    assert ds.captions[-1] == samples[0]["txt"]
    for i in (1, 5, 6):   # the last one comes from the gzipped shard
        expected = samples[i % 6]["png"]
        assert np.array_equal(np.asarray(ds.load_image(i)), np.asarray(expected))


def test_unencodable_value_is_named(tmp_path):
    with ShardWriter(str(tmp_path / "s-%03d.tar")) as w:
        with pytest.raises(ValueError, match=r"sample 'k1': cannot encode \.txt from a int"):
            w.write({"__key__": "k1", "txt": 5})
        with pytest.raises(ValueError, match=r"cannot encode \.weird from a dict"):
            w.write({"__key__": "k2", "weird": {"a": 1}})
