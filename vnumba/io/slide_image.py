"""Plain-image backend of :class:`vnumba.io.slides.SlideReader`: PNG, JPEG and plain TIFF.

The image is read whole, once, through :func:`vnumba.io.images.read_image` (so its pixel
size comes from the same TIFF metadata parsing as everywhere else), converted to uint8 RGB and
served as a single level.  Meant for images that fit in memory: fields of view, crops, the
tests' small slides.
"""
from __future__ import annotations

from vnumba.io.images import read_image
from vnumba.io.slide_base import SlideReader, as_rgb8, slide_error

__all__ = ["ImageSlide"]


class ImageSlide(SlideReader):
    """A single-level slide held in memory."""

    backend = "image"

    def __init__(self, path, mpp: float | None = None):
        super().__init__(path, mpp)
        try:
            data = read_image(self.path)
        except (ValueError, OSError) as exc:
            # read_image's messages already name the file
            raise slide_error(self.path, "cannot read image", exc) from exc
        self._rgb = as_rgb8(data.array, self.path)
        h, w = self._rgb.shape[:2]
        self._init_levels([(w, h)], data.mpp)

    def _read(self, level, x, y, width, height):
        return self._rgb[y:y + height, x:x + width].copy()

    def _close(self):
        self._rgb = None
