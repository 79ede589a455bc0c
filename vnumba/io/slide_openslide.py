"""OpenSlide backend of :class:`vnumba.io.slides.SlideReader`.

Reads the vendor formats OpenSlide knows (Aperio ``.svs``, Hamamatsu ``.ndpi``/``.vms``/
``.vmu``, MIRAX ``.mrxs``, Leica ``.scn``, Ventana ``.bif``, Philips/Sakura/Zeiss files and
any TIFF it recognises) through ``openslide-python``; the ``openslide-bin`` wheel brings the C
library, so no system package is needed.  OpenSlide decodes only the tiles a region covers.
"""
from __future__ import annotations

import numpy as np

from vnumba.io.slide_base import SlideReader, is_tiff_file, slide_error

__all__ = ["OpenSlideReader"]


class OpenSlideReader(SlideReader):
    """A slide read by OpenSlide.

    The pixel size is OpenSlide's ``openslide.mpp-x`` property, else the TIFF metadata of
    :func:`vnumba.io.images.tiff_mpp` (for TIFF-based files).  OpenSlide addresses regions
    by their level-0 corner; :meth:`_read` converts the level coordinates (exact for the
    integer downsamples of most pyramids, within a fraction of a pixel otherwise).
    Transparent pixels (outside the scanned area) become white.
    """

    backend = "openslide"

    def __init__(self, path, mpp: float | None = None):
        super().__init__(path, mpp)
        import openslide
        if is_tiff_file(self.path):
            # OpenSlide opens a TIFF whose tiles are cut off and fails only on reading them
            from vnumba.io.slide_tiff import tiff_damage
            problem = tiff_damage(self.path)
            if problem:
                raise slide_error(self.path, problem)
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise slide_error(self.path, "cannot open slide (truncated, corrupt or unsupported file?)",
                              exc) from exc
        try:
            dims = self._osr.level_dimensions
            downsamples = self._osr.level_downsamples
            meta = self._metadata_pixel_size()
        except Exception as exc:
            self._osr.close()
            raise slide_error(self.path, "cannot read slide structure", exc) from exc
        try:
            self._init_levels(dims, meta, downsamples)
        except Exception:
            self._osr.close()
            raise

    def _metadata_pixel_size(self) -> float | None:
        value = self._osr.properties.get("openslide.mpp-x")
        if value is not None:
            try:
                v = float(value)
                if v > 0:
                    return v
            except ValueError:
                pass
        if is_tiff_file(self.path):
            from vnumba.io.images import tiff_mpp
            try:
                return tiff_mpp(self.path)
            except ValueError:
                return None
        return None

    @property
    def vendor(self) -> str | None:
        """OpenSlide's name of the format (``"aperio"``, ``"hamamatsu"``, …)."""
        return self._osr.properties.get("openslide.vendor")

    def _read(self, level, x, y, width, height):
        ds = self._downsamples[level]
        img = self._osr.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height))
        rgba = np.asarray(img)
        if rgba.ndim != 3 or rgba.shape[2] != 4:
            raise ValueError(f"OpenSlide returned an array of shape {rgba.shape}")
        alpha = rgba[:, :, 3]
        if np.all(alpha == 255):
            return np.ascontiguousarray(rgba[:, :, :3])
        # openslide-python gives straight (un-premultiplied) RGBA: composite onto white
        a = alpha[:, :, None].astype(np.uint16)
        rgb = (rgba[:, :, :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
        return np.ascontiguousarray(rgb.astype(np.uint8))

    def _close(self):
        self._osr.close()
