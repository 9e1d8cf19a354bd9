"""WebDataset tar shards: the on-disk format for image, text and image-text corpora.

A shard is a tar (optionally gzipped) whose members are named ``<key>.<ext>`` (``0001.jpg``,
``0001.txt``, ``0001.cls``); consecutive members with the same key form one sample. Values are
encoded by the ``webdataset`` library's own encoders (chosen by extension: ``cls`` ints, ``txt``
strings, ``json`` dicts, ``jpg``/``png`` PIL images or arrays, ``npy`` arrays; bytes pass through),
so ``webdataset`` reads what we write and we read what it writes. Shard specs are what
``webdataset`` accepts: brace lists (``s-{000..009}.tar``, ``{a,b}.tar``), ``::``-joined specs,
globs, lists, plus folders (every ``.tar``, ``.tar.gz``, ``.tgz`` in them).
"""
from __future__ import annotations

import glob
import io
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

__all__ = ["ShardWriter", "iter_tar_samples", "list_shards", "encode_sample", "unsafe_member_name",
           "SHARD_SUFFIXES"]

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")

Sample = dict  # {"__key__": str, "__shard__": str, ext: bytes, ...}


def _split_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.JPG`` -> (``dir/abc``, ``seg.jpg``): key up to the first dot of the basename,
    extension lower-cased (webdataset's ``base_plus_ext`` and ``lcase``)."""
    d, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext.lower()


def encode_sample(sample: Mapping[str, Any]) -> dict[str, bytes]:
    """Encode each value by its extension with ``webdataset``'s default encoders (bytes and str
    pass through as bytes/UTF-8); a value no encoder takes is named with its key and extension."""
    from webdataset.writer import default_handlers, encode_based_on_extension1

    out = {}
    for ext, value in sample.items():
        if ext.startswith("__"):
            continue
        try:
            data = encode_based_on_extension1(value, ext, default_handlers)
        except Exception as e:  # webdataset raises ValueError, AssertionError or the encoder's own error
            raise ValueError(f"sample {sample.get('__key__')!r}: cannot encode .{ext} from a "
                             f"{type(value).__name__} ({type(e).__name__}: {e}); give bytes or a value "
                             "webdataset encodes for this extension (cls: int, txt: str, json: dict, "
                             "jpg/png: PIL image, npy: array)") from e
        out[ext] = bytes(data)
    return out


def unsafe_member_name(name: str) -> str | None:
    """Why a tar member or sample key could write outside its folder on extraction, else None."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a '..' component"
    return None


def iter_tar_samples(path: str | os.PathLike) -> Iterator[Sample]:
    """Yield the samples of one shard in order, each a dict of extension -> raw bytes.

    Members whose names could escape a folder on extraction (absolute, ``..``) are skipped with a
    one-line report naming the shard and the member.
    """
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
            why = unsafe_member_name(member.name)
            if why:
                print(f"{path}: skipped member {member.name!r} ({why})", file=sys.stderr)
                continue
            key, ext = _split_name(member.name)
            if not ext:
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__shard__": str(path)}
            elif ext in current:
                raise ValueError(f"{path}: sample {key!r} has two .{ext} members")
            f = tf.extractfile(member)
            current[ext] = f.read() if f is not None else b""
        if current is not None:
            yield current


def list_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand a folder, a glob (``shards/*.tar``), brace lists (``s-{000..009}.tar``, ``{a,b}``),
    ``::``-joined specs or a list, in order (as ``webdataset.shardlists.expand_urls`` does)."""
    from braceexpand import braceexpand

    if not isinstance(spec, (str, os.PathLike)):
        return [p for s in spec for p in list_shards(s)]
    s = os.fspath(spec)
    if "::" in s or "{" in s:
        return [p for part in s.split("::") for one in braceexpand(part) for p in list_shards(Path(one))]
    p = Path(s)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.name.endswith(SHARD_SUFFIXES) and not q.name.startswith("."))
    if any(c in s for c in "*?["):
        return sorted(Path(m) for m in glob.glob(s))
    return [p]


class ShardWriter:
    """Write samples into numbered shards of at most ``maxcount`` samples each.

    ``pattern`` holds one ``%d``-style field, e.g. ``out/train-%06d.tar`` (``.tar.gz``: gzipped).
    Values are encoded by :func:`encode_sample` (webdataset's encoders). Each shard is written to a
    temporary file and renamed when complete, so a crash never leaves a truncated shard.
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
        self._tar = tarfile.open(self._tmp, "w:gz" if final.name.endswith((".gz", ".tgz")) else "w")

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

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample: ``{"__key__": "id", "jpg": bytes | PIL image, "cls": 3, "json": {...}}``."""
        key = sample.get("__key__")
        if not key or "." in os.path.basename(str(key)):
            raise ValueError(f"sample key must be non-empty and dot-free, got {key!r}")
        why = unsafe_member_name(str(key))
        if why:
            raise ValueError(f"sample key {key!r} is {why}: it could write outside a folder on extraction")
        encoded = encode_sample(sample)
        if self._tar is None:
            self._open()
        now = time.time()
        for ext, data in encoded.items():
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
