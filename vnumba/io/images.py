"""Reading and writing the images users feed to and get from the network.

Input: PNG, JPEG and TIFF, 8- or 16-bit (or float TIFF already in [0, 1]), grey or with
channels last (TIFFs with channels first are transposed).  TIFFs may carry their pixel size;
:func:`tiff_mpp` turns it into micrometres per pixel (µm/px) from the standard resolution
tags, ImageJ or OME metadata or an Aperio ``MPP =`` description.

Output: PNG files written atomically (:func:`vnumba.io.outputs.atomic_write`: temporary file
in the target directory, then renamed into place), so an interrupted run never leaves a truncated
result under the final name.
Probability masks are stored as 16-bit PNG, ``0..65535 <-> 0..1`` (:func:`encode_mask16`).

Every error raised here names the offending file.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The one atomic writer; atomic_write_bytes / atomic_write_text are re-exported from here.
from vnumba.io.outputs import atomic_write, atomic_write_bytes, atomic_write_text

__all__ = [
    "ImageData", "read_image", "tiff_mpp", "match_channels", "image_to_float", "float_to_uint",
    "encode_mask16", "decode_mask16", "write_png", "atomic_write_bytes", "atomic_write_text",
    "INPUT_SUFFIXES", "MAX_IMAGE_PIXELS", "declared_size",
]

#: File name endings :func:`read_image` accepts.
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

_TIFF_SUFFIXES = (".tif", ".tiff")
# Micrometres per resolution unit of the TIFF ResolutionUnit tag (2 = inch, 3 = centimetre).
_UM_PER_RESUNIT = {2: 25400.0, 3: 10000.0}
_UM_PER_OME_UNIT = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "nm": 1e-3,
                    "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass(frozen=True)
class ImageData:
    """An image as read from disk.

    Attributes
    ----------
    array : ndarray, shape (H, W, C)
        Native dtype (uint8, uint16 or float), channels last; grey images have ``C = 1``.
    mpp : float or None
        Pixel size in µm/px if the file records it.
    path : Path
    """

    array: np.ndarray
    mpp: float | None
    path: Path

    @property
    def name(self) -> str:
        """File name without its suffix (output files are named after it)."""
        return self.path.stem


#: Plausible pixel sizes (µm/px): from beyond 100x objectives to a 0.2x overview.  A value
#: outside is a typo or a unit mix-up, and resampling by it could ask for terabytes.
MPP_RANGE = (0.01, 50.0)
#: Largest image (pixels) that prediction resamples to (about 16 GiB of float32 RGB).
MAX_RESAMPLED_PIXELS = 2 ** 30
#: Largest image (pixels, 8192² = 67 Mpx) :func:`read_image` decodes: whole-image prediction
#: holds about 200 bytes per pixel (14 GiB at this size).  Checked from the file's header
#: before any pixel is decoded, so a small compressed file declaring 30000² px is refused
#: rather than allocated.  Larger images are slides: ``vnumba.slide`` reads them tile by tile
#: from a tiled (pyramidal) TIFF or a slide format.
MAX_IMAGE_PIXELS = 2 ** 26


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _fail(path, msg) -> ValueError:
    return ValueError(f"{path}: {_one_line(msg)}")


# ----------------------------------------------------------------------------- reading
def read_image(path, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageData:
    """Read a PNG, JPEG or TIFF image.

    Parameters
    ----------
    path : str or Path
    max_pixels : int
        Refuse, from the file's header and before decoding, an image with more pixels
        (:data:`MAX_IMAGE_PIXELS`).

    Returns
    -------
    ImageData
        ``array`` has shape (H, W, C) with ``C >= 1``; ``mpp`` comes from TIFF metadata
        (None for PNG/JPEG, which have no reliable pixel-size field).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unknown suffix, unreadable/truncated file, unsupported layout or dtype, more than
        ``max_pixels`` pixels, a TIFF of several pages; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise _fail(path, f"unsupported file type {path.suffix!r}; expected one of {INPUT_SUFFIXES}")
    if path.stat().st_size == 0:
        raise _fail(path, "is empty (0 bytes); not an image")
    if suffix not in _TIFF_SUFFIXES:  # TIFF: checked on its series before reading (_read_tiff)
        _check_pixels(path, declared_size(path), max_pixels)
    mpp = None
    if suffix in _TIFF_SUFFIXES:
        arr, mpp = _read_tiff(path, max_pixels)
    elif suffix == ".png":
        arr = _read_png(path)
    else:
        import imageio.v3 as iio
        try:
            arr = np.asarray(iio.imread(path))
        except Exception as exc:  # imageio raises many types for corrupt files
            # imageio's message may add lines of plugins to install: its first line says it
            first = (str(exc).strip().splitlines() or [""])[0]
            raise _fail(path, f"cannot read image ({type(exc).__name__}: {_one_line(first)})") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise _fail(path, f"expected a 2-D image with optional channels, got array shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise _fail(path, f"unsupported pixel type {arr.dtype}; expected 8/16-bit or float")
    return ImageData(np.ascontiguousarray(arr), mpp, path)


def declared_size(path) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG declares in its header, without decoding pixels (None when
    the header cannot be parsed: decoding then reports the file as unreadable)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    import warnings

    try:
        from PIL import Image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: we say it ourselves
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    return tuple(int(v) for v in im.size)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Exception:  # not an image Pillow knows: the decoder will say so
        return None


def _check_pixels(path, size, max_pixels) -> None:
    """Refuse ``size`` = (width, height) beyond ``max_pixels`` naming the file and the size."""
    if size is None:
        return
    w, h = size
    if w * h > max_pixels:
        raise _fail(path, f"image of {w}x{h} px ({w * h / 1e6:.0f} Mpx) is beyond the "
                          f"{max_pixels / 1e6:.0f} Mpx one image may have (whole-image work holds "
                          f"it in memory); analyse larger images with vnumba.slide from a tiled "
                          f"(pyramidal) TIFF or a slide file")


def _read_png(path: Path) -> np.ndarray:
    """PNG at full bit depth (imagecodecs/libpng: Pillow returns only the high byte of a
    16-bit RGB PNG); an all-opaque alpha channel is dropped, a real one is refused."""
    import imagecodecs

    try:
        arr = np.asarray(imagecodecs.png_decode(path.read_bytes()))
    except Exception as exc:  # imagecodecs raises its own error types for corrupt files
        raise _fail(path, f"cannot read PNG ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        alpha = arr[..., -1]
        if not np.all(alpha == np.iinfo(arr.dtype).max):
            raise _fail(path, "has a transparent alpha channel (a cut-out?); save it without "
                              "alpha or flatten it onto a background first")
        arr = arr[..., :-1]
    return arr


class _Refused(Exception):
    """A TIFF refused on its layout before reading (message already names the file)."""


def _read_tiff(path: Path, max_pixels: int = MAX_IMAGE_PIXELS):
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            pages = _full_resolution_pages(tif)
            images = [x for x in tif.series
                      if (x.name or "").lower() not in ("label", "macro", "thumbnail")]
            if len(images) > 1 or (pages > 1 and not (tif.is_shaped or tif.is_imagej
                                                      or tif.is_ome)):
                # Pages without metadata saying what they are (a stack? channels? several
                # images?): taking the first one, or stacking them as channels, would be a
                # silent guess.
                raise _Refused(_fail(path, f"TIFF of {len(tif.pages)} pages; vnumba reads one 2-D image "
                                           f"per file: save the page to analyse as its own file "
                                           f"(a whole-slide pyramid: use vnumba.slide)"))
            ys = [n for a, n in zip(series.axes, series.shape) if a in "YX"]
            if len(ys) == 2:
                _check_pixels(path, (ys[1], ys[0]), max_pixels)
            arr = series.asarray()
            axes = series.axes
            mpp = _mpp_from_tiff(tif)
    except _Refused as r:
        raise r.args[0] from None
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise _fail(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        raise _fail(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    # Drop singleton axes (time, z, ...) and put the channel axis last.
    keep = [i for i, (a, n) in enumerate(zip(axes, arr.shape)) if n > 1 or a in "YX"]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    # Shaped TIFFs without an axis description call the leading axis Q (or I): with a single
    # such axis beside Y and X it can only be the channels.
    generic = [a for a in axes if a in "QI"]
    if len(generic) == 1 and len(axes) == 3:
        axes = axes.replace(generic[0], "C")
    extra = [a for a in axes if a not in "YXSC"]
    if extra or axes.count("Y") != 1 or axes.count("X") != 1 or len(axes) > 3:
        raise _fail(path, f"TIFF with axes {axes!r} and shape {arr.shape}: only single 2-D "
                          "images (with channels) are supported")
    order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a in "SC"]
    return np.transpose(arr, order), mpp


def _full_resolution_pages(tif) -> int:
    """Pages of ``tif`` that are images of their own (reduced-resolution pages, e.g. a
    pyramid's or a thumbnail, not counted); stops counting at 2."""
    n = 0
    for page in tif.pages:
        if not getattr(page, "is_reduced", False):
            n += 1
            if n > 1:
                break
    return n


def tiff_mpp(path) -> float | None:
    """Pixel size in µm/px recorded in a TIFF file, or None if it records none.

    Sources, in order: OME-XML ``PhysicalSizeX``; an Aperio ``MPP = x`` image description;
    ImageJ metadata with unit micron and the XResolution tag; the XResolution and
    ResolutionUnit tags (inch or centimetre).  A tag without unit gives None.
    """
    import tifffile
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            return _mpp_from_tiff(tif)
    except Exception as exc:
        raise _fail(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from exc


def _mpp_from_tiff(tif) -> float | None:
    page = tif.pages[0]
    if tif.ome_metadata:
        v = _mpp_from_ome(tif.ome_metadata)
        if v is not None:
            return v
    desc = page.tags.get("ImageDescription")
    if desc is not None and isinstance(desc.value, str):
        m = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", desc.value)
        if m:
            v = float(m.group(1))
            if v > 0:
                return v
    xres = page.tags.get("XResolution")
    if xres is None:
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if not num or not den:
        return None
    px_per_unit = num / den
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    ij = tif.imagej_metadata or {}
    ij_unit = str(ij.get("unit", "")).strip().lower()
    if unit == 1 and ij_unit in ("micron", "um", "µm", "\u03bcm", "\\u00b5m"):
        return 1.0 / px_per_unit
    if unit in _UM_PER_RESUNIT:
        # Writers that know nothing of the pixel size often store 72 or 96 dpi; that is a
        # screen resolution, not a microscope's, and must not trigger resampling.
        if unit == 2 and px_per_unit in (1.0, 72.0, 96.0, 150.0, 300.0):
            return None
        return _UM_PER_RESUNIT[unit] / px_per_unit
    return None


def _mpp_from_ome(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            scale = _UM_PER_OME_UNIT.get(unit)
            if scale is None:
                return None
            v = float(el.attrib["PhysicalSizeX"]) * scale
            return v if v > 0 else None
    return None


# ----------------------------------------------------------------------------- channels
def match_channels(arr: np.ndarray, expected: int, path="image") -> np.ndarray:
    """Bring an (H, W, C) image to ``expected`` channels or raise naming the file.

    Accepted conversions, both lossless: a fully opaque alpha channel is dropped (RGBA to RGB,
    grey+alpha to grey), and a grey image stored as three identical channels becomes one
    channel when the model wants one.

    Raises
    ------
    ValueError
        Any other channel count mismatch.
    """
    if arr.ndim != 3:
        raise _fail(path, f"expected an (H, W, C) array, got shape {arr.shape}")
    C = arr.shape[2]
    if C in (2, 4) and C != expected and np.all(arr[:, :, -1] == _dtype_max(arr.dtype)):
        arr = arr[:, :, :-1]
        C -= 1
    if C == 3 and expected == 1 and np.array_equal(arr[:, :, 0], arr[:, :, 1]) \
            and np.array_equal(arr[:, :, 0], arr[:, :, 2]):
        arr = arr[:, :, :1]
        C = 1
    if C != expected:
        raise _fail(path, f"image has {C} channel(s), the model expects {expected}")
    return np.ascontiguousarray(arr)


def _dtype_max(dtype) -> float:
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return float(np.iinfo(dtype).max)
    return 1.0


# ----------------------------------------------------------------------------- scaling
def image_to_float(arr: np.ndarray, scale: str = "dtype", path="image") -> np.ndarray:
    """Convert to float32 values in [0, 1].

    Parameters
    ----------
    arr : ndarray, shape (H, W, C), uint8, uint16 or float
    scale : {"dtype", "percentile"}
        ``"dtype"``: divide by the type's maximum (255 or 65535); floats must already lie in
        [0, 1].  ``"percentile"``: map each channel's 0.5th..99.5th percentile to 0..1 and clip
        (for fluorescence stored in 16 bits that uses a small part of the range).
    path : str or Path
        Named in error messages.

    Returns
    -------
    ndarray, shape (H, W, C), float32, C-contiguous
    """
    if scale not in ("dtype", "percentile"):
        raise ValueError(f"scale must be 'dtype' or 'percentile', got {scale!r}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise _fail(path, "image contains NaN or inf")
    elif arr.dtype not in (np.uint8, np.uint16):
        raise _fail(path, f"unsupported pixel type {arr.dtype}")
    if scale == "percentile":
        x = arr.astype(np.float64)
        lo = np.percentile(x, 0.5, axis=(0, 1), keepdims=True)
        hi = np.percentile(x, 99.5, axis=(0, 1), keepdims=True)
        out = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
        return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)
    if arr.dtype.kind == "f":
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise _fail(path, f"float image has values in [{arr.min():g}, {arr.max():g}], "
                              "expected [0, 1]")
        return np.ascontiguousarray(arr, dtype=np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32) / np.float32(_dtype_max(arr.dtype))


def float_to_uint(x: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """Values in [0, 1] to uint8 or uint16 (rounded, clipped)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        raise TypeError(f"dtype must be uint8 or uint16, got {dtype}")
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        raise ValueError("array contains NaN or inf")
    top = np.iinfo(dtype).max
    return np.round(np.clip(x, 0.0, 1.0) * top).astype(dtype)


def encode_mask16(m: np.ndarray) -> np.ndarray:
    """Probability mask (H, W) in [0, 1] to uint16 with ``0..65535 <-> 0..1``.

    The round trip :func:`decode_mask16` ∘ :func:`encode_mask16` is exact to within half a
    quantisation step, ``1 / (2 * 65535)``.
    """
    m = np.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    return float_to_uint(m, np.uint16)


def decode_mask16(a: np.ndarray) -> np.ndarray:
    """uint16 mask to float32 probabilities in [0, 1] (inverse of :func:`encode_mask16`)."""
    a = np.asarray(a)
    if a.dtype != np.uint16:
        raise TypeError(f"16-bit mask expected, got dtype {a.dtype}")
    return a.astype(np.float32) / np.float32(65535.0)


# ----------------------------------------------------------------------------- writing
def write_png(path, arr: np.ndarray) -> None:
    """Write a uint8/uint16 array, (H, W) or (H, W, C) with C in {1, 3, 4}, as PNG atomically."""
    import imageio.v3 as iio
    arr = np.asarray(arr)
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"cannot write shape {arr.shape} as PNG")
    if arr.dtype == np.uint16 and arr.ndim == 3:
        # Pillow cannot write 16-bit colour PNGs; libpng (imagecodecs) can.
        import imagecodecs
        data = imagecodecs.png_encode(np.ascontiguousarray(arr))
        atomic_write_bytes(path, data)
        return
    atomic_write(path, lambda tmp: iio.imwrite(tmp, np.ascontiguousarray(arr), extension=".png"))
