"""WebDataset tar shards: the on-disk format for image, text and image-text corpora.

A shard is a plain tar whose members are named ``<key>.<ext>`` (``0001.jpg``, ``0001.txt``,
``0001.cls``); consecutive members with the same key form one sample. This is the format the
``webdataset`` library reads, written and read here with the standard ``tarfile`` module.
"""
from __future__ import annotations

import glob
import io
import os
import tarfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

__all__ = ["ShardWriter", "iter_tar_samples", "list_shards"]

Sample = dict  # {"__key__": str, "__shard__": str, ext: bytes, ...}


def _split_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``): key up to the first dot of the basename."""
    d, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext


def iter_tar_samples(path: str | os.PathLike) -> Iterator[Sample]:
    """Yield the samples of one shard in order, each a dict of extension -> raw bytes."""
    path = Path(path)
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{path}: not a readable tar shard ({e})") from e
    with tf:
        current: Sample | None = None
        for member in tf:
            if not member.isfile():
                continue
            key, ext = _split_name(member.name)
            if not ext:
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__shard__": str(path)}
            f = tf.extractfile(member)
            current[ext] = f.read() if f is not None else b""
        if current is not None:
            yield current


def list_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand a folder, a glob (``shards/*.tar``), a brace range (``s-{000..009}.tar``) or a list."""
    if not isinstance(spec, (str, os.PathLike)):
        return [p for s in spec for p in list_shards(s)]
    s = os.fspath(spec)
    if "{" in s and ".." in s:
        pre, rest = s.split("{", 1)
        rng, post = rest.split("}", 1)
        lo, hi = rng.split("..")
        return [Path(f"{pre}{i:0{len(lo)}d}{post}") for i in range(int(lo), int(hi) + 1)]
    p = Path(s)
    if p.is_dir():
        return sorted(p.glob("*.tar"))
    if any(c in s for c in "*?["):
        return sorted(Path(m) for m in glob.glob(s))
    return [p]


class ShardWriter:
    """Write samples into numbered shards of at most ``maxcount`` samples each.

    ``pattern`` holds one ``%d``-style field, e.g. ``out/train-%06d.tar``. Each shard is written to
    a temporary file and renamed when complete, so a crash never leaves a truncated shard.
    """

    def __init__(self, pattern: str, maxcount: int = 10000):
        if "%" not in pattern:
            raise ValueError(f"shard pattern needs a %d field, got {pattern!r}")
        self.pattern, self.maxcount = pattern, maxcount
        self.shard_index, self.count, self.paths = 0, 0, []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None

    def _open(self) -> None:
        final = Path(self.pattern % self.shard_index)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = final.with_name(f".{final.name}.tmp")
        self._tar = tarfile.open(self._tmp, "w")

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = Path(self.pattern % self.shard_index)
        os.replace(self._tmp, final)
        self.paths.append(final)
        self._tar, self._tmp = None, None
        self.shard_index += 1
        self.count = 0

    def write(self, sample: Mapping[str, bytes | str]) -> None:
        """Add one sample: ``{"__key__": "id", "jpg": bytes, "txt": str, ...}``."""
        key = sample.get("__key__")
        if not key or "." in os.path.basename(str(key)):
            raise ValueError(f"sample key must be non-empty and dot-free, got {key!r}")
        if self._tar is None:
            self._open()
        now = time.time()
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime = len(data), now
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        if self.count >= self.maxcount:
            self._close()

    def close(self) -> list[Path]:
        """Finish the last shard and return the paths of all shards written."""
        self._close()
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
