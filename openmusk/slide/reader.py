"""Whole-slide readers: OpenSlide formats (SVS, NDPI, MRXS, tiled TIFF, ...) and plain images.

One :class:`Slide` object hides the backend: level sizes and downsamples, microns per pixel (from
the file or an explicit override), and ``read_region`` at a target mpp that reads from the best
pyramid level and resizes, so callers think in microns, never in levels.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from PIL import Image

from openmusk.core.images import ImageError, open_image

__all__ = ["Slide", "SlideError", "MppMissingError", "open_slide", "SLIDE_EXTENSIONS",
           "IMAGE_EXTENSIONS", "list_slides"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".vms", ".vmu", ".svslide",
                    ".bif", ".dcm") + IMAGE_EXTENSIONS

# A level may be used for a target mpp when it is at most this much coarser than wanted
# (pyramid downsamples are rarely exact powers of two: 3.9993 instead of 4).
_LEVEL_TOLERANCE = 1.01
_THUMB_READ_PIXELS = 64_000_000   # read a thumbnail's source level in strips above this size
_UNIT_TO_UM = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


class SlideError(RuntimeError):
    """A slide file that cannot be opened or read; the message names the file."""


class MppMissingError(SlideError):
    """The slide's microns-per-pixel is neither in the file nor given explicitly."""


class Slide:
    """A whole-slide image at several resolutions, addressed in level-0 pixels and microns."""

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, default_mpp: float | None = None):
        self.path = Path(path)
        self.name = self.path.stem
        if not self.path.exists():
            raise SlideError(f"{self.path}: no such slide file")
        self._osr: Any = None
        self._image: Image.Image | None = None
        if self.path.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                self._image = open_image(self.path)
            except ImageError as e:
                raise SlideError(str(e)) from None
            self.level_dimensions: tuple[tuple[int, int], ...] = (self._image.size,)
            self.level_downsamples: tuple[float, ...] = (1.0,)
            self.properties: dict[str, str] = {}
        else:
            openslide = _openslide()
            try:
                self._osr = openslide.OpenSlide(str(self.path))
            except (openslide.OpenSlideError, OSError) as e:
                raise SlideError(f"{self.path}: OpenSlide cannot open it ({type(e).__name__}: {e})") from e
            self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._osr.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
            self.properties = dict(self._osr.properties)
        self._mpp_override = float(mpp) if mpp is not None else None
        self._mpp_default = float(default_mpp) if default_mpp is not None else None
        for label, value in (("mpp override", self._mpp_override), ("default mpp", self._mpp_default)):
            if value is not None and not value > 0:
                raise ValueError(f"{self.path}: {label} must be positive, got {value}")

    # -- geometry -------------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        """Number of pyramid levels (1 for plain images)."""
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def mpp_from_file(self) -> float | None:
        """Microns per level-0 pixel as the file states it, or None."""
        p = self.properties
        for key in ("openslide.mpp-x", "aperio.MPP"):
            if p.get(key):
                value = float(p[key])
                if value > 0:
                    return value
        unit, xres = p.get("tiff.ResolutionUnit", "").lower(), p.get("tiff.XResolution")
        if unit in _UNIT_TO_UM and xres and float(xres) > 0:
            return _UNIT_TO_UM[unit] / float(xres)
        return None

    @property
    def mpp_if_known(self) -> float | None:
        """The override, else the file's microns per pixel, else the default, else None."""
        for value in (self._mpp_override, self.mpp_from_file, self._mpp_default):
            if value is not None:
                return value
        return None

    @property
    def mpp(self) -> float:
        """Microns per level-0 pixel: the explicit override, else the file's value, else the default."""
        value = self.mpp_if_known
        if value is None:
            raise MppMissingError(
                f"{self.path}: the file states no microns per pixel (no openslide.mpp-x, aperio.MPP "
                "or TIFF resolution); pass it explicitly: open_slide(path, mpp=0.5) or --mpp 0.5")
        return value

    @property
    def objective_power(self) -> float:
        """Level-0 magnification: the file's objective power, else 10 / mpp (0.5 µm/px = 20x)."""
        value = self.properties.get("openslide.objective-power")
        if value:
            try:
                return float(value)
            except ValueError:
                pass
        return 10.0 / self.mpp

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (so we only shrink)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * _LEVEL_TOLERANCE:
                best = i if d >= self.level_downsamples[best] else best
        return best

    def best_level_for_mpp(self, mpp: float) -> int:
        """The level to read from for output at ``mpp`` microns per pixel."""
        return self.best_level_for_downsample(mpp / self.mpp)

    # -- pixels ---------------------------------------------------------------------------------
    def read_level(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """RGB pixels of ``size`` at ``level``, top-left at level-0 ``location``; outside is white."""
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} out of range (0..{self.level_count - 1})")
        if self._image is not None:
            canvas = Image.new("RGB", (w, h), (255, 255, 255))
            iw, ih = self._image.size
            box = (max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih))
            if box[0] < box[2] and box[1] < box[3]:
                canvas.paste(self._image.crop(box), (box[0] - x, box[1] - y))
            return canvas
        openslide = _openslide()
        try:
            rgba = self._osr.read_region((x, y), level, (w, h))
        except openslide.OpenSlideError as e:
            raise SlideError(f"{self.path}: cannot read region {(x, y, w, h)} at level {level} ({e})") from e
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")

    def read_region(self, location: tuple[int, int], size: tuple[int, int], mpp: float | None = None,
                    resample: int = Image.BILINEAR) -> Image.Image:
        """``size`` pixels at ``mpp`` µm/px (default: level-0 mpp) from level-0 ``location``.

        Reads from the best pyramid level and resizes to exactly ``size``.
        """
        if mpp is None:
            return self.read_level(location, 0, size)
        downsample = mpp / self.mpp
        level = self.best_level_for_downsample(downsample)
        scale = downsample / self.level_downsamples[level]
        src = (max(1, math.ceil(size[0] * scale - 1e-6)), max(1, math.ceil(size[1] * scale - 1e-6)))
        region = self.read_level(location, level, src)
        return region if region.size == tuple(size) else region.resize(tuple(size), resample)

    def thumbnail(self, mpp: float | None = None, max_size: int = 2048) -> tuple[Image.Image, float]:
        """The whole slide at ``mpp`` (or fitting ``max_size``), and its level-0 downsample factor."""
        w0, h0 = self.dimensions
        downsample = max(w0, h0) / max_size if mpp is None else mpp / self.mpp
        downsample = max(downsample, max(w0, h0) / max_size, 1.0)
        size = (max(1, round(w0 / downsample)), max(1, round(h0 / downsample)))
        level = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        if lw * lh <= _THUMB_READ_PIXELS:
            img = self.read_level((0, 0), level, (lw, lh))
            if img.size != size:
                img = img.resize(size, Image.BILINEAR if img.width < 4 * size[0] else Image.BOX)
            return img, w0 / size[0]
        # a level too large to hold at once (no pyramid): read and shrink full-width strips
        img = Image.new("RGB", size, (255, 255, 255))
        level_ds = self.level_downsamples[level]
        rows = max(1, int(_THUMB_READ_PIXELS / (lw * lh / size[1])))   # output rows per strip
        for r0 in range(0, size[1], rows):
            r1 = min(size[1], r0 + rows)
            y0, y1 = round(r0 * h0 / size[1] / level_ds), round(r1 * h0 / size[1] / level_ds)
            y1 = min(max(y1, y0 + 1), lh)
            strip = self.read_level((0, round(y0 * level_ds)), level, (lw, y1 - y0))
            img.paste(strip.resize((size[0], r1 - r0), Image.BOX), (0, r0))
        return img, w0 / size[0]

    def close(self) -> None:
        """Release the file handle."""
        if self._osr is not None:
            self._osr.close()
            self._osr = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = self.mpp_if_known
        return (f"Slide({self.path.name!r}, levels={self.level_dimensions}, "
                f"mpp={mpp if mpp is not None else 'unknown'})")


def _openslide():
    """The openslide module, or an error saying how to install it."""
    try:
        import openslide
    except ImportError as e:
        raise ImportError("reading whole-slide formats needs OpenSlide: pip install 'openmusk[slide]' "
                          "(openslide-python and openslide-bin)") from e
    return openslide


def open_slide(path: str | os.PathLike, mpp: float | None = None, default_mpp: float | None = None) -> Slide:
    """Open a whole-slide image (any OpenSlide format) or a PNG/JPEG as a one-level slide.

    ``mpp`` overrides the file's microns per pixel; ``default_mpp`` is used only where it has none.
    """
    return Slide(path, mpp=mpp, default_mpp=default_mpp)


def list_slides(folder: str | os.PathLike, extensions: tuple[str, ...] = SLIDE_EXTENSIONS) -> list[Path]:
    """Slide files directly in ``folder`` (sorted), by extension; hidden and temp files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of slides")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))
