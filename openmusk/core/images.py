"""The one safe image opener: every image path (embed, eval datasets, plain-image slides, VQA,
make-shards) decodes through here.

Why one place: ``Image.convert("RGB")`` clips 16-bit greyscale (modes ``I;16``, ``I``, ``F``,
common from scanners and microscopy cameras) at 255, so such an image became pure white without a
word; and PIL's decompression-bomb guard raises an error type that no caller expected. Here a
16-bit image is scaled to 8 bits over its type's range, a float image over [0, 1] (or its own range
when it leaves [0, 1]), and every failure is an :class:`ImageError` naming the file.
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ImageError", "open_image", "to_rgb", "MAX_IMAGE_PIXELS"]

# PIL refuses images above twice its warning limit (about 179 megapixels); we keep that bound.
MAX_IMAGE_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16BS", "I;16LS", "I;16S")


class ImageError(ValueError):
    """An image that cannot be used, with the file (or sample) it came from in the message."""


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit and float greyscale are scaled, never clipped.

    Transparent pixels are composited on white (a slide's background).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode, name)).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_to_uint8(arr: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Greyscale values -> uint8: 16-bit over 0..65535, float over [0, 1] (or its own min..max)."""
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageError(f"{name}: {mode} image holds NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F":
        if lo < 0.0 or hi > 1.0:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return np.rint(a * 255.0).astype(np.uint8)
    if lo < 0 or hi > 65535:  # 32-bit integer data outside the 16-bit range: its own range
        a = (a - lo) / (hi - lo) * 65535.0 if hi > lo else np.zeros_like(a)
    return np.rint(a * (255.0 / 65535.0)).astype(np.uint8)


def open_image(source: str | os.PathLike | bytes | Any, name: str | None = None,
               max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a path, bytes or file object to a loaded 8-bit RGB PIL image.

    ``name`` is what errors call the image (default: the path); ``max_pixels`` refuses larger
    images (decompression bombs), None for no limit (large plain-image slides).
    """
    name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is more than the {max_pixels:,} allowed "
                                 "(a decompression bomb or a slide: open slides with `openmusk slide`)")
            if im.mode == "RGB" or im.format == "JPEG":
                im.draft("RGB", im.size)  # JPEG decodes straight to RGB
            im.load()
            return to_rgb(im, name)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such image file") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as e:
        raise ImageError(f"{name}: cannot read image ({e})") from None
