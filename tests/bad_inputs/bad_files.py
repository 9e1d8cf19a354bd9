"""Builders of bad files shared by the bad-input tests (imported by name: tests/bad_inputs is on
the path)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

TINY = "random:musk_tiny_patch16_32"


def png_bomb(path: Path, side: int = 20_000) -> Path:
    """A valid-looking greyscale PNG header claiming ``side`` x ``side`` pixels (400 megapixels) with
    a few bytes of data: what a decompression bomb looks like to a reader, at no memory cost."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def sixteen_bit_gradient(size: int = 48) -> np.ndarray:
    """A uint16 greyscale ramp over the whole 16-bit range (mean 32767.5): white if clipped at 255."""
    ramp = np.linspace(0, 65535, size * size).round().astype(np.uint16)
    return ramp.reshape(size, size)
