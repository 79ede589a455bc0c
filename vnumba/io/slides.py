"""Whole-slide images: one reader interface over OpenSlide, tifffile and plain images.

:class:`SlideReader` is the interface every backend implements: pyramid levels, their sizes
and downsample factors, the pixel size, and :meth:`SlideReader.read_region`, which reads one
rectangle of one level as uint8 RGB while decoding only the tiles or strips it covers.  The
backends, one small module each:

* :mod:`vnumba.io.slide_openslide` — OpenSlide (the ``openslide-bin`` wheel, no system
  package): Aperio SVS, Hamamatsu NDPI/VMS/VMU, MIRAX MRXS, Leica SCN, Ventana BIF and the
  other vendor formats OpenSlide recognises;
* :mod:`vnumba.io.slide_tiff` — tifffile + imagecodecs: OME-TIFF and generic tiled (or
  stripped) pyramidal TIFF, levels from SubIFDs or reduced-resolution pages;
* :mod:`vnumba.io.slide_image` — PNG, JPEG and TIFF layouts the two above do not handle,
  read whole through :func:`vnumba.io.images.read_image` (one level).

:func:`open_slide` (here) is the one place that chooses the backend.  The interface itself
lives in :mod:`vnumba.io.slide_base`, which the backends import (importing this module
would make a cycle with the factory), and is re-exported here: import everything from
:mod:`vnumba.io.slides`.  Every error is a :class:`SlideError`: one line that names the
file.

Coordinates follow OpenSlide's convention: sizes are ``(width, height)``, ``x`` is the
column, ``y`` the row, level 0 is the full resolution.
"""
from __future__ import annotations

import math
from pathlib import Path

from vnumba.io.images import MPP_RANGE
from vnumba.io.slide_base import MAX_REGION_PIXELS, SlideError, SlideReader, as_rgb8, is_tiff_file, slide_error

__all__ = ["SlideError", "SlideReader", "open_slide", "SLIDE_SUFFIXES", "OPENSLIDE_SUFFIXES",
           "TIFF_SUFFIXES", "IMAGE_SUFFIXES", "MAX_REGION_PIXELS", "as_rgb8", "is_tiff_file"]

#: Suffixes of the formats only OpenSlide reads.
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: TIFF suffixes (OME-TIFF ends in ``.ome.tif``); OpenSlide is asked first, then tifffile.
TIFF_SUFFIXES = (".tif", ".tiff")
#: Plain images, read whole.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Every suffix :func:`open_slide` accepts.
SLIDE_SUFFIXES = OPENSLIDE_SUFFIXES + TIFF_SUFFIXES + IMAGE_SUFFIXES


def _detect_openslide(path: Path) -> str | None:
    """OpenSlide's vendor name for ``path`` (e.g. ``"aperio"``, ``"generic-tiff"``) or None."""
    try:
        import openslide
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # a file OpenSlide cannot even probe is not OpenSlide's
        return None


def open_slide(path, mpp: float | None = None) -> SlideReader:
    """Open a whole-slide image (or a plain image) with the backend that reads it.

    Parameters
    ----------
    path : str or Path
    mpp : float, optional
        Pixel size of level 0 in µm/px; overrides the file's metadata.

    Returns
    -------
    SlideReader
        Close it (or use it as a context manager) when done.

    The backend: PNG/JPEG → :mod:`~vnumba.io.slide_image`; a file OpenSlide recognises as a
    vendor format (Aperio, Hamamatsu, MIRAX, Leica, Ventana, …) → OpenSlide; any other TIFF
    (OME-TIFF, generic tiled or stripped pyramids) → tifffile, and when its layout is not an
    8/16-bit grey/RGB(A) image, the whole-image reader (up to :data:`MAX_REGION_PIXELS`
    pixels, larger ones are refused); a TIFF tifffile cannot parse but
    OpenSlide calls ``generic-tiff`` → OpenSlide.

    Raises
    ------
    SlideError
        Missing file, unknown format or not a slide, truncated or unreadable file, a bad
        ``mpp``; one line naming the file.
    """
    path = Path(path)
    if mpp is not None:
        try:
            mpp = float(mpp)
        except (TypeError, ValueError):
            raise slide_error(path, f"mpp must be a number of µm/px, got {mpp!r}") from None
        if not (math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
            raise slide_error(path, f"mpp must be between {MPP_RANGE[0]:g} and {MPP_RANGE[1]:g} µm/px, got {mpp:g}")
    if not path.is_file():
        raise slide_error(path, "no such file" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    if suffix not in SLIDE_SUFFIXES:
        raise slide_error(path, f"unsupported file type {path.suffix!r}; expected one of {', '.join(SLIDE_SUFFIXES)}")
    if suffix in IMAGE_SUFFIXES:
        from vnumba.io.slide_image import ImageSlide
        return ImageSlide(path, mpp)
    vendor = _detect_openslide(path)
    if vendor is not None and vendor != "generic-tiff":
        from vnumba.io.slide_openslide import OpenSlideReader
        return OpenSlideReader(path, mpp)
    try:
        is_tiff = is_tiff_file(path)
    except OSError as exc:
        raise slide_error(path, "cannot read file", exc) from exc
    if not is_tiff:
        raise slide_error(path, "not a slide: neither OpenSlide nor tifffile recognises the format "
                                "(a truncated, corrupt or mislabelled file?)")
    from vnumba.io.slide_tiff import TiffSlide, UnsupportedLayout
    try:
        return TiffSlide(path, mpp)
    except UnsupportedLayout as exc:
        # another layout (channels first, float, palette, ...): read whole if it is small enough
        if suffix in TIFF_SUFFIXES and exc.pixels <= MAX_REGION_PIXELS:
            from vnumba.io.slide_image import ImageSlide
            return ImageSlide(path, mpp)
        raise
    except SlideError:
        if vendor == "generic-tiff":
            from vnumba.io.slide_openslide import OpenSlideReader
            return OpenSlideReader(path, mpp)
        raise
