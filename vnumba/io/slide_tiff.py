"""tifffile backend of :class:`vnumba.io.slides.SlideReader`: OME-TIFF and generic pyramidal TIFF.

tifffile parses the file (IFDs, SubIFDs, OME-XML, the pyramid of its first series); this
module only picks, for a requested rectangle, the tiles or strips that overlap it, reads
their bytes with tifffile's ``FileHandle.read_segments`` and decodes each with the page's own
decoder (``TiffPage.decode``, imagecodecs underneath: JPEG, JPEG 2000, LZW, Deflate, Zstd,
WebP, …), so a region costs the segments it covers and never a whole level.

Levels are the first series' ``levels`` (OME-TIFF and generic SubIFD pyramids, SVS, and
reduced-resolution pages in the main IFD chain).  Pixel size: the OME ``PhysicalSizeX``, an
Aperio ``MPP =`` description or the resolution tags (:func:`vnumba.io.images.tiff_mpp`).
Layouts other than one 8/16-bit grey or RGB(A) plane per level raise
:class:`UnsupportedLayout`, on which :func:`vnumba.io.slides.open_slide` falls back to the
whole-image reader.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re

import numpy as np

from vnumba.io.images import _mpp_from_tiff
from vnumba.io.slide_base import SlideError, SlideReader, as_rgb8, slide_error

__all__ = ["TiffSlide", "UnsupportedLayout", "tiff_truncation", "tiff_damage"]

# TIFF photometric interpretations read here: MINISBLACK, RGB, YCbCr (JPEG-compressed only).
_PHOTOMETRIC_OK = (1, 2, 6)
_JPEG = (6, 7, 34892, 33007)


class UnsupportedLayout(SlideError):
    """A TIFF that is readable but not a grey/RGB(A) pyramid of 8/16-bit planes; ``pixels``
    is the size of its first image (what reading it whole would cost)."""

    def __init__(self, msg: str, pixels: int = 0):
        super().__init__(msg)
        self.pixels = int(pixels)


# tifffile logs, rather than raises, when it skips a damaged part of a file (an IFD beyond the
# end, a tag list that cannot be read) and then reads what is left: for a slide that is an error.
_DAMAGE = re.compile(r"invalid (page|value|tag|data)|corrupt|truncat|TiffFileError|struct\.error|beyond|EOF",
                     re.IGNORECASE)


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_warnings():
    """Collect what tifffile logs at WARNING or above while the block runs."""
    logger = logging.getLogger("tifffile")
    rec = _Recorder()
    logger.addHandler(rec)
    try:
        yield rec.messages
    finally:
        logger.removeHandler(rec)


def tiff_truncation(tif, size: int) -> str | None:
    """Describe why the TIFF opened as ``tif`` is truncated — a SubIFD, tile or strip of any
    page lying beyond the file's ``size`` bytes — or None when everything lies inside."""
    for i, page in enumerate(tif.pages):
        for off in getattr(page, "subifds", None) or ():
            if off >= size:
                return f"truncated file: a sub-image of page {i} starts at byte {off}, beyond the file's {size} bytes"
        offsets = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        n = min(len(offsets), len(counts))
        if n == 0:
            continue
        ends = offsets[:n] + counts[:n]
        if ends.max() > size:
            return (f"truncated file: image data of page {i} ends at byte {int(ends.max())}, "
                    f"beyond the file's {size} bytes")
    return None


def tiff_damage(path) -> str | None:
    """Why the TIFF file ``path`` is truncated or structurally damaged, or None: parses it
    with tifffile (pages, first series and its levels) and checks every segment's extent.
    OpenSlide opens such files and fails only when a missing tile is read."""
    import tifffile
    try:
        with _tifffile_warnings() as warnings, tifffile.TiffFile(path) as tif:
            if tif.series:
                _ = tif.series[0].levels
            problem = tiff_truncation(tif, tif.filehandle.size)
    except Exception as exc:
        return f"cannot read TIFF structure ({type(exc).__name__}: {exc})"
    if problem:
        return problem
    damage = [m for m in warnings if _DAMAGE.search(m)]
    return f"damaged TIFF structure (truncated file?): {damage[0]}" if damage else None


class TiffSlide(SlideReader):
    """A TIFF pyramid read segment by segment through tifffile."""

    backend = "tifffile"

    def __init__(self, path, mpp: float | None = None):
        super().__init__(path, mpp)
        import tifffile
        with _tifffile_warnings() as warnings:
            try:
                self._tif = tifffile.TiffFile(self.path)
            except Exception as exc:  # TiffFileError, struct.error, OSError, ...
                raise slide_error(self.path, "cannot read TIFF (truncated or corrupt file?)", exc) from exc
            try:
                self._setup(warnings)
            except Exception as exc:
                self._tif.close()
                if isinstance(exc, SlideError):
                    raise
                raise slide_error(self.path, "cannot read TIFF structure (truncated or corrupt file?)", exc) from exc

    def _setup(self, warnings: list[str]) -> None:
        tif = self._tif
        if not tif.series:
            raise slide_error(self.path, "TIFF holds no image")
        series = tif.series[0]
        levels = series.levels
        damage = [m for m in warnings if _DAMAGE.search(m)]
        if damage:
            raise slide_error(self.path, f"damaged TIFF structure (truncated file?): {damage[0]}")
        pages = []
        for lv in levels:
            if len(lv.pages) != 1:
                raise UnsupportedLayout(f"{self.path}: TIFF series with axes {series.axes!r} and "
                                        f"{len(lv.pages)} planes per level; a slide has one RGB plane",
                                        math.prod(series.shape))
            pages.append(lv.pages[0])  # a TiffPage, or a TiffFrame sharing a keyframe's tags
        for page in pages:
            self._check_page(page.keyframe)
        problem = tiff_truncation(tif, tif.filehandle.size)
        if problem:
            raise slide_error(self.path, problem)
        self._pages = pages
        tif.filehandle.set_lock(True)  # reads from several threads seek the one handle
        self._init_levels([(p.keyframe.imagewidth, p.keyframe.imagelength) for p in pages], _mpp_from_tiff(tif))

    def _check_page(self, page) -> None:
        spp = page.samplesperpixel
        why = None
        if page.imagedepth != 1:
            why = f"a volume of depth {page.imagedepth}"
        elif spp not in (1, 2, 3, 4):
            why = f"{spp} samples per pixel"
        elif spp > 1 and page.planarconfig != 1:
            why = "separate colour planes"
        elif page.photometric not in _PHOTOMETRIC_OK:
            why = f"photometric interpretation {int(page.photometric)}"
        elif page.photometric == 6 and page.compression not in _JPEG:
            why = "YCbCr without JPEG compression"
        elif page.dtype not in (np.uint8, np.uint16):
            why = f"pixel type {page.dtype}"
        if why:
            raise UnsupportedLayout(f"{self.path}: TIFF with {why}: not an 8/16-bit grey or RGB slide",
                                    page.imagewidth * page.imagelength * max(page.imagedepth, 1))

    def _segments(self, page, x, y, width, height):
        """Indices of the tiles or strips of ``page`` that overlap the rectangle."""
        if page.is_tiled:
            tw, tl = page.tilewidth, page.tilelength
            nx = math.ceil(page.imagewidth / tw)
            rows = range(y // tl, (y + height - 1) // tl + 1)
            cols = range(x // tw, (x + width - 1) // tw + 1)
            return [r * nx + c for r in rows for c in cols]
        rps = min(page.rowsperstrip or page.imagelength, page.imagelength)
        return list(range(y // rps, (y + height - 1) // rps + 1))

    def _read(self, level, x, y, width, height):
        frame = self._pages[level]
        page = frame.keyframe  # tags and decoder; the frame has the segment offsets
        fh = self._tif.filehandle
        idx = self._segments(page, x, y, width, height)
        offsets, counts = frame.dataoffsets, frame.databytecounts
        decode = page.decode
        kwargs = {}
        if page.compression in _JPEG:
            kwargs = {"jpegtables": frame.jpegtables, "jpegheader": page.jpegheader}
        out = np.full((height, width, page.samplesperpixel), np.iinfo(page.dtype).max, page.dtype)
        for data, index in fh.read_segments([offsets[i] for i in idx], [counts[i] for i in idx],
                                            indices=idx, sort=True, lock=fh.lock, flat=True):
            if data is None:
                continue  # an empty (never written) segment: background, left white
            seg, pos, _shape = decode(data, index, **kwargs)
            if seg is None:
                continue
            seg = seg.reshape(seg.shape[-3:]) if seg.ndim > 3 else seg  # (length, width, samples)
            sy, sx = int(pos[-3]), int(pos[-2])
            # overlap of the segment with the rectangle, in level coordinates
            ay0, ay1 = max(sy, y), min(sy + seg.shape[0], y + height, page.imagelength)
            ax0, ax1 = max(sx, x), min(sx + seg.shape[1], x + width, page.imagewidth)
            if ay1 > ay0 and ax1 > ax0:
                out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = seg[ay0 - sy:ay1 - sy, ax0 - sx:ax1 - sx]
        return as_rgb8(out, self.path)

    def _close(self):
        self._tif.close()
