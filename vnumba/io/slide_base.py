"""The slide reader interface: :class:`SlideReader`, :class:`SlideError` and the helpers
every backend shares.

Kept apart from the factory (:func:`vnumba.io.slides.open_slide`, which imports the
backends) so that the backends import the interface without an import cycle; use
:mod:`vnumba.io.slides`, which re-exports everything public here.
"""
from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from vnumba.io.images import MPP_RANGE

__all__ = ["SlideError", "SlideReader", "MAX_REGION_PIXELS", "as_rgb8", "is_tiff_file", "slide_error",
           "one_line"]

#: Largest region :meth:`SlideReader.read_region` returns (pixels; 768 MiB of RGB).
MAX_REGION_PIXELS = 2 ** 28
#: Largest level-0 side (pixels) a slide may declare (the largest scanned sections are about
#: 2·10^5 px a side); a header declaring more is refused before anything is planned.
MAX_SLIDE_SIDE = 2 ** 20

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SlideError(ValueError):
    """A slide that cannot be opened or read, or a bad argument; the message is one line that
    names the file (and, for a failed read, the level and region)."""


def one_line(text) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def slide_error(path, msg, exc: BaseException | None = None) -> SlideError:
    """A :class:`SlideError` ``"PATH: MSG (ExcType: exc message)"`` on one line."""
    tail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return SlideError(one_line(f"{path}: {msg}{tail}"))


class SlideReader(ABC):
    """A pyramidal (or single-level) slide opened for reading regions.

    Subclasses set :attr:`path`, the level geometry and the metadata pixel size in their
    constructor through :meth:`_init_levels`, and implement :meth:`_read` (one in-bounds
    rectangle) and :meth:`_close`.  Everything else — argument checks, the white fill outside
    a level, error wrapping, the ``mpp=`` override, level choice — lives here.

    Attributes
    ----------
    path : Path
        The slide file.
    backend : str
        ``"openslide"``, ``"tifffile"`` or ``"image"``.
    mpp_source : str or None
        ``"metadata"`` (read from the file), ``"given"`` (the ``mpp=`` of :func:`open_slide`)
        or None (unknown).
    """

    backend = "abstract"

    def __init__(self, path, mpp: float | None = None):
        self.path = Path(path)
        self._mpp_given = mpp
        self._closed = False
        self._dims: tuple[tuple[int, int], ...] = ()
        self._downsamples: tuple[float, ...] = ()
        self._metadata_mpp: float | None = None

    @property
    def given_mpp(self) -> float | None:
        """The level-0 pixel size given when opening (``--mpp``), or None."""
        return self._mpp_given

    # ------------------------------------------------------------------ set by subclasses
    def _init_levels(self, dimensions, metadata_mpp: float | None, downsamples=None) -> None:
        """Record the levels: ``dimensions`` as (width, height) per level, finest first;
        ``downsamples`` default to level-0 size / level size (mean of both axes)."""
        dims = tuple((int(w), int(h)) for w, h in dimensions)
        if not dims or any(w < 1 or h < 1 for w, h in dims):
            raise slide_error(self.path, f"empty image or level (level sizes {list(dims)})")
        w0, h0 = dims[0]
        if max(w0, h0) > MAX_SLIDE_SIDE:
            # Declared by the file's header; the largest scanned sections are ~2·10^5 px.
            raise slide_error(self.path, f"declares {w0}x{h0} px at level 0, beyond the "
                                         f"{MAX_SLIDE_SIDE} px a side a slide may have")
        if downsamples is None:
            w0, h0 = dims[0]
            downsamples = [(w0 / w + h0 / h) / 2.0 for w, h in dims]
        ds = (1.0,) + tuple(float(d) for d in downsamples)[1:]
        if len(ds) != len(dims) or any(not (math.isfinite(d) and d > 0) for d in ds):
            raise slide_error(self.path, f"invalid level downsamples {list(ds)}")
        self._dims = dims
        self._downsamples = ds
        if metadata_mpp is not None and not (math.isfinite(metadata_mpp)
                                             and MPP_RANGE[0] <= metadata_mpp <= MPP_RANGE[1]):
            metadata_mpp = None  # a typo or unit mix-up in the file: treat as unknown
        self._metadata_mpp = metadata_mpp

    @abstractmethod
    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a rectangle that lies inside level ``level``, ``width, height >= 1``; return
        uint8 (height, width, 3)."""

    @abstractmethod
    def _close(self) -> None:
        """Release the backend's file handles."""

    # ------------------------------------------------------------------ geometry
    @property
    def level_count(self) -> int:
        """Number of pyramid levels (1 for a plain image)."""
        return len(self._dims)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` in pixels of each level, level 0 (full resolution) first."""
        return self._dims

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self._dims[0]

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each level relative to level 0 (level 0: 1.0)."""
        return self._downsamples

    # ------------------------------------------------------------------ pixel size
    @property
    def mpp(self) -> float | None:
        """Pixel size of level 0 in µm/px: the ``mpp=`` given to :func:`open_slide`, else the
        file's metadata, else None."""
        return self._mpp_given if self._mpp_given is not None else self._metadata_mpp

    @property
    def metadata_mpp(self) -> float | None:
        """Pixel size of level 0 recorded in the file (µm/px), or None."""
        return self._metadata_mpp

    @property
    def mpp_source(self) -> str | None:
        """``"given"``, ``"metadata"`` or None: where :attr:`mpp` comes from."""
        if self._mpp_given is not None:
            return "given"
        return "metadata" if self._metadata_mpp is not None else None

    def level_mpp(self, level: int) -> float | None:
        """Pixel size in µm/px of ``level`` (level-0 µm/px times its downsample), or None."""
        level = self._check_level(level)
        return None if self.mpp is None else self.mpp * self._downsamples[level]

    def best_level(self, target_mpp: float) -> int:
        """The level whose µm/px is closest to ``target_mpp`` in log ratio; on a tie the finer.

        Raises
        ------
        SlideError
            The slide's pixel size is unknown (give it with ``--mpp``), or ``target_mpp`` is
            not a positive finite number.
        """
        try:
            target = float(target_mpp)
        except (TypeError, ValueError):
            target = float("nan")
        if not (math.isfinite(target) and target > 0):
            raise slide_error(self.path, f"target pixel size must be a positive number of µm/px, got {target_mpp!r}")
        if self.mpp is None:
            raise slide_error(self.path, "the file records no pixel size; give it with --mpp (µm/px of level 0)")
        dist = [abs(math.log(self.mpp * d / target)) for d in self._downsamples]
        best = min(dist)
        return next(i for i, v in enumerate(dist) if v <= best + 1e-9)

    # ------------------------------------------------------------------ reading
    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a rectangle of one level as RGB.

        Parameters
        ----------
        level : int
            Pyramid level, ``0 <= level < level_count``.
        x, y : int
            Top-left corner in pixels **of that level** (not level 0, unlike OpenSlide's
            ``read_region``); ``x`` is the column.  May be negative or beyond the level.
        width, height : int
            Size in pixels of that level, ``>= 0``.

        Returns
        -------
        ndarray, shape (height, width, 3), uint8, C-contiguous
            The pixels; the parts outside the level are white (255).  Only the tiles or
            strips that overlap the rectangle are read and decoded.

        Raises
        ------
        SlideError
            Bad arguments (level out of range, negative or too large size, closed reader) or
            a tile that cannot be read or decoded (the message names file, level and region).
        """
        level = self._check_level(level)
        try:
            x, y, width, height = (operator.index(v) for v in (x, y, width, height))
        except TypeError as exc:
            raise slide_error(self.path, f"region x, y, width, height must be integers, "
                                         f"got {(x, y, width, height)!r}") from exc
        if width < 0 or height < 0:
            raise slide_error(self.path, f"region size must be >= 0, got width={width} height={height}")
        if width * height > MAX_REGION_PIXELS:
            raise slide_error(self.path, f"region {width}x{height} is larger than "
                                         f"{MAX_REGION_PIXELS} pixels; read it in tiles")
        out = np.full((height, width, 3), 255, np.uint8)
        W, H = self._dims[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, W), min(y + height, H)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            part = self._read(level, x0, y0, x1 - x0, y1 - y0)
        except SlideError:
            raise
        except Exception as exc:  # backends raise many types for corrupt data
            raise slide_error(self.path, f"cannot read level {level} region x={x} y={y} "
                                         f"width={width} height={height}", exc) from exc
        if part.shape != (y1 - y0, x1 - x0, 3) or part.dtype != np.uint8:
            raise slide_error(self.path, f"level {level} region x={x} y={y}: backend returned "
                                         f"{part.dtype} {part.shape}, expected uint8 {(y1 - y0, x1 - x0, 3)}")
        out[y0 - y:y1 - y, x0 - x:x1 - x] = part
        return out

    def _check_level(self, level) -> int:
        if self._closed:
            raise slide_error(self.path, "slide is closed")
        try:
            level = operator.index(level)
        except TypeError:
            raise slide_error(self.path, f"level must be an integer, got {level!r}") from None
        if not 0 <= level < len(self._dims):
            raise slide_error(self.path, f"level {level} out of range: the slide has {len(self._dims)} "
                                         f"level(s), 0 to {len(self._dims) - 1}")
        return level

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the file; further reads raise :class:`SlideError`.  Idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path.name!r} levels={list(self._dims)} "
                f"mpp={self.mpp}>")


def is_tiff_file(path) -> bool:
    """True when the file starts with a TIFF or BigTIFF header."""
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def as_rgb8(arr: np.ndarray, path="slide") -> np.ndarray:
    """An (H, W, C) grey, grey+alpha, RGB or RGBA array as uint8 RGB, C-contiguous.

    uint16 is scaled by 255/65535 (rounded), floats in [0, 1] by 255; alpha is composited onto
    white (the background of a slide).  Anything else raises :class:`SlideError` naming
    ``path``.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise slide_error(path, f"pixels of shape {arr.shape}: expected grey or RGB with optional alpha")
    if arr.dtype == np.uint8:
        a8 = arr
    elif arr.dtype == np.uint16:
        a8 = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or (arr.size and (arr.min() < 0 or arr.max() > 1)):
            raise slide_error(path, "float pixels must be finite and within [0, 1]")
        a8 = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise slide_error(path, f"unsupported pixel type {arr.dtype}; expected 8/16-bit or float")
    C = a8.shape[2]
    if C in (2, 4):
        colour, alpha = a8[:, :, :-1], a8[:, :, -1:]
        if not np.all(alpha == 255):
            a = alpha.astype(np.uint16)
            colour = ((colour.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        a8 = colour
    if a8.shape[2] == 1:
        a8 = np.repeat(a8, 3, axis=2)
    return np.ascontiguousarray(a8)
