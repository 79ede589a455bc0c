"""Pixel size (µm/px) of an image that records none, from the width of its nuclei.

A PNG or JPEG tile carries no pixel size, and a 40x tile (0.25 µm/px) taken for the model's
20x (0.48 µm/px) is segmented at twice the size the network knows.  Nuclei are a ruler that
every stained section carries: their *width* varies far less between cell types and tissues
than anything else in the image, so the pixel size follows from how many pixels a typical
nucleus is wide.

Physical prior
--------------
:data:`NUCLEAR_WIDTH_UM` = **4.5 µm**, the width (short axis) of a typical dark nucleus in a
paraffin section.  A small lymphocyte is about the size of a red cell (7-8 µm) and its round
nucleus fills most of it (about 6 µm across in life); fixation and processing shrink tissue by
some 10 %, and a 3-5 µm section cuts most nuclei off their equator, so lymphocyte profiles in
H&E sections measure 4-5 µm across.  Stromal, endothelial and smooth-muscle nuclei are long
but 2-4 µm wide, non-neoplastic epithelial nuclei 4-6 µm wide; 4.5 µm is the middle of these.
Only tumour nuclei are much wider (7-12 µm), and they are paler, so they weigh less in the
statistic below.  The typical width differs between tissues: :data:`PRIOR_SPREAD` (±25 %) is
part of every interval reported, and it bounds what any estimate from nuclear size can do.

Method (no fitting to any image set)
------------------------------------
1. Nuclear stain density: the haematoxylin optical density of colour deconvolution for a
   brightfield RGB image (:func:`vnumba.analysis.baseline.haematoxylin`), the intensity for a
   fluorescence one (bright nuclei on a dark background).
2. Nuclear mask: Gaussian smoothing (1 px), Otsu's threshold, holes filled (pale nucleoli and
   vesicular chromatin); touching nuclei cut apart along the valleys of the stain (a watershed
   of the density seeded by the maxima that rise above their surroundings by half the
   nuclear contrast — geodesic, so independent of the scale).
3. Width: the *local thickness* of the mask — for every mask pixel the diameter of the
   largest disc inside the mask that covers it — which is the diameter of a round nucleus and
   the short axis of an elongated one.  Its average (geometric, over the central 80 % of the
   distribution), weighted by the squared stain excess above the threshold (dark nuclei count
   most, specks and pale texture least), is the typical nuclear width ``w`` in pixels.
4. Scale-free: a first pass on the image (reduced to at most 0.5 Mpx) finds ``w`` roughly;
   the density is then resampled so that ``w`` becomes :data:`CANONICAL_WIDTH_PX` pixels and
   steps 2-3 are repeated there (the 1 px smoothing and the disc radii are then in units of
   the nucleus), once more if the width moved by more than 15 %.  Nuclei 5 px or 40 px wide
   are analysed alike.  Images above 4 Mpx are measured on up to 3 x 3 tiles of 1024 px.
5. ``mpp = NUCLEAR_WIDTH_UM / w``; ``low``/``high`` combine the prior's spread with the
   sampling error of the weighted median width.

Scan magnifications: slide scanners digitise at a few nominal pixel sizes (10 µm divided by
80, 40, 20, 10 ... : :data:`NOMINAL_MPP`, each vendor within a few per cent).  The one
nearest to the estimate, when it lies within two standard deviations of it (``[low, high]``
widened to twice its log-width), is :attr:`PixelSizeEstimate.nominal`; ``vnumba.predict``
uses it, since the raw estimate carries the ±25 % of the prior and the sizes are a factor 2
apart.  An image from a camera of another pixel size needs ``--mpp``.

Refusal (``confident=False``): stain contrast no higher than the noise (blank slide, noise,
a constant image), the darkest objects coloured unlike haematoxylin (a blue dye, ink or
pigment, whose red/blue optical density is more than twice haematoxylin's), nuclei narrower
than :data:`MIN_WIDTH_PX`, fewer than ``min_nuclei``
separate nucleus-sized objects, a mask covering almost nothing or almost everything, or a
width distribution broader than ``max_spread`` (the ratio of its weighted 75th to 25th
percentile).  :func:`require_confident` (or ``strict=True``) turns a refusal into a
:class:`PixelSizeError` whose one-line message asks for ``--mpp``.

Measured on the development images with known magnification: ``bench/pixel_size.py`` (figures
in ``docs/predict_evaluate.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from vnumba.analysis.baseline import haematoxylin

__all__ = [
    "NUCLEAR_WIDTH_UM", "PRIOR_SPREAD", "CANONICAL_WIDTH_PX", "MIN_WIDTH_PX", "NOMINAL_MPP",
    "PixelSizeEstimate", "PixelSizeError", "estimate_mpp", "require_confident",
    "nuclear_density", "local_thickness",
]

#: Typical width (short axis) of a dark nucleus in a tissue section, µm (module docstring).
NUCLEAR_WIDTH_UM = 4.5
#: Relative spread of that width between tissues (one standard deviation in log terms).
PRIOR_SPREAD = 0.25
#: Typical nuclear width, in pixels, that the second pass resamples the image to.
CANONICAL_WIDTH_PX = 12.0
#: Narrowest typical nuclear width that can be measured, pixels of the input image.
MIN_WIDTH_PX = 3.0
#: Pixel sizes of the usual scan magnifications 80x ... 2.5x (10 µm / magnification).
NOMINAL_MPP = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)

_MIN_CONTRAST_SNR = 4.0       # stain excess of the mask over the noise of the density
_MIN_CONTRAST_OD = 0.02       # ... and in absolute optical density (brightfield)
_MASK_FRACTION = (0.003, 0.75)
_MAX_RED_BLUE = 4.5            # twice haematoxylin's red/blue optical density (0.65 / 0.29)
_MAX_PIXELS = 4 * 1024 * 1024  # larger images are analysed on a grid of tiles
_TILE = 1024
_FIRST_PASS_PIXELS = 512 * 1024
_SMOOTH = 1.0                 # Gaussian smoothing of the density, pixels of the analysed image
_SEED_GAP = CANONICAL_WIDTH_PX / 2
_VALLEY_DEPTH = 0.5           # stain dip that separates touching nuclei, fraction of the contrast


class PixelSizeError(ValueError):
    """The pixel size of an image cannot be estimated reliably; the message is one line and
    asks for ``--mpp``."""


@dataclass(frozen=True)
class PixelSizeEstimate:
    """Result of :func:`estimate_mpp`.

    Attributes
    ----------
    mpp : float
        Estimated pixel size, µm/px (NaN when nothing could be measured).
    low, high : float
        Interval for ``mpp`` (about ±1 standard deviation: the prior's spread between tissues
        and the sampling error of the median width combined).
    n_nuclei : int
        Nucleus-sized objects found (touching nuclei that could not be split count once).
    basis : str
        One line saying what was measured and which prior turned it into µm.
    confident : bool
        False when the estimate must not be used (see ``reason``).
    width_px : float
        Typical nuclear width measured, pixels of the input image (NaN if none).
    spread : float
        Weighted 75th / 25th percentile ratio of the nuclear widths (NaN if none).
    reason : str
        Why the estimate is not confident ("" when it is).
    """

    mpp: float
    low: float
    high: float
    n_nuclei: int
    basis: str
    confident: bool
    width_px: float = float("nan")
    spread: float = float("nan")
    reason: str = ""

    @property
    def nominal(self) -> float | None:
        """The pixel size of a usual scan magnification (:data:`NOMINAL_MPP`: 10 µm / 80x,
        40x, 20x, 10x, 5x, 2.5x) nearest to ``mpp`` (in log terms) among those within two
        standard deviations of it (``[low, high]`` is one), or None (none is, or the estimate
        is not confident).  Scanners digitise at these nominal sizes (to within a few per
        cent), a factor 2 apart, so the nearest compatible one is the better guess: the raw
        estimate carries the ±25 % spread of nuclear widths between tissues.
        """
        if not (self.confident and np.isfinite(self.low) and np.isfinite(self.high)
                and self.low > 0 and self.high > self.low):
            return None
        lo = self.mpp * (self.low / self.mpp) ** 2
        hi = self.mpp * (self.high / self.mpp) ** 2
        inside = [m for m in NOMINAL_MPP if lo <= m <= hi]
        return min(inside, key=lambda m: abs(math.log(self.mpp / m))) if inside else None


# ----------------------------------------------------------------------------- inputs
def _check_image(img) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"img must be a numpy.ndarray, got {type(img).__name__}")
    if img.dtype.kind != "f":
        raise TypeError(f"img must be a float array with values in [0, 1], got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"img must have shape (H, W, 3) (RGB) or (H, W) / (H, W, 1) (grey), "
                         f"got {img.shape}")
    if img.shape[0] < 16 or img.shape[1] < 16:
        raise ValueError(f"img must be at least 16 x 16 pixels, got {img.shape[:2]}")
    if not np.all(np.isfinite(img)):
        raise ValueError("img contains NaN or inf")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"img values must lie in [0, 1], got [{lo:g}, {hi:g}]")
    return img


def nuclear_density(img: np.ndarray, modality: str = "auto") -> tuple[np.ndarray, str]:
    """Nuclear stain density of an image: larger where nuclei are.

    Parameters
    ----------
    img : ndarray, shape (H, W, 3), (H, W, 1) or (H, W), float, values in [0, 1]
        RGB brightfield (H&E) or fluorescence (grey, or RGB with a dark background).
    modality : {"auto", "brightfield", "fluorescence"}
        ``"auto"``: grey images are fluorescence; RGB images are fluorescence when their
        median brightness is below 0.3 (a dark background), brightfield otherwise.

    Returns
    -------
    density : ndarray, shape (H, W), float64
        Brightfield: haematoxylin optical density (colour deconvolution; slightly negative
        where there is none).
        Fluorescence: the intensity (mean over channels).
    modality : str
        ``"brightfield"`` or ``"fluorescence"``, the one used.
    """
    img = _check_image(img)
    if modality not in ("auto", "brightfield", "fluorescence"):
        raise ValueError(f"modality must be 'auto', 'brightfield' or 'fluorescence', got {modality!r}")
    grey = img.ndim == 2
    if modality == "auto":
        modality = "fluorescence" if grey or float(np.median(img.mean(axis=2))) < 0.3 else "brightfield"
    if modality == "brightfield":
        if grey:
            raise ValueError("modality 'brightfield' needs an RGB image (H, W, 3)")
        return haematoxylin(img.astype(np.float64)), modality
    x = img if grey else img.mean(axis=2)
    return x.astype(np.float64), modality


# ----------------------------------------------------------------------------- thickness
def local_thickness(mask: np.ndarray, radii) -> np.ndarray:
    """Local thickness of a binary mask on a grid of radii.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
    radii : sequence of float
        Increasing disc radii, pixels.

    Returns
    -------
    ndarray, shape (H, W), int16
        For every pixel the number of radii ``r`` of the grid for which a disc of radius ``r``
        inside the mask covers the pixel (the morphological opening by that disc keeps it):
        ``k`` means ``radii[k-1] <= R < radii[k]`` for the radius ``R`` of the largest such
        disc; 0 outside the mask and where no disc of the grid fits.  Radii are measured, as
        by the Euclidean distance transform, from pixel centres to the centre of the nearest
        background pixel, so a bar ``n`` pixels wide has ``R = (n + 1) / 2``.  Discs may not
        reach outside the image.
    """
    if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 2:
        raise TypeError("mask must be a 2-D numpy bool array")
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(np.diff(r) <= 0) or r[0] <= 0:
        raise ValueError("radii must be a non-empty increasing sequence of positive numbers")
    out = np.zeros(mask.shape, np.int16)
    if not mask.any():
        return out
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    for k, rad in enumerate(r, 1):
        core = dist >= rad
        if not core.any():
            break
        covered = ndi.distance_transform_edt(~core) <= rad
        out[covered & mask] = k
    return out


def _hist_quantiles(values: np.ndarray, hist: np.ndarray, qs) -> np.ndarray:
    """Quantiles of a weighted histogram over increasing ``values`` (log-linear between the
    centres of the bins)."""
    c = np.cumsum(hist) / hist.sum()
    mids = c - 0.5 * hist / hist.sum()
    keep = hist > 0
    return np.exp(np.interp(qs, mids[keep], np.log(values[keep])))


@dataclass(frozen=True)
class _Pass:
    width: float          # typical nuclear width, pixels of the analysed image
    q25: float
    q75: float
    n_objects: int        # nucleus-sized objects
    n_eff: float          # effective number of objects behind the weighted statistic
    contrast: float       # mean smoothed density in the mask minus outside
    noise: float          # noise of the smoothed density
    mask_fraction: float


def _measure(d: np.ndarray, per_octave: int, w_range: tuple[float, float],
             seed_gap: float = 0.0) -> _Pass | None:
    """Steps 2-3 of the module docstring on one density image: widths between ``w_range``
    (pixels), ``per_octave`` grid steps per factor of two; maxima of the stain closer than
    ``seed_gap`` pixels seed one nucleus together (chromatin grains of one nucleus)."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    ds = ndi.gaussian_filter(d, _SMOOTH)
    if not np.ptp(ds) > 0:
        return None
    t = float(threshold_otsu(ds))
    mask = ndi.binary_fill_holes(ds > t)
    frac = float(mask.mean())
    if not 0.0 < frac < 1.0:
        return None
    # noise of the smoothed density, from the finest detail of the raw one (MAD); white
    # noise of std s has std s / (2 sqrt(pi) sigma) after a Gaussian of sigma pixels
    fine = d - ndi.gaussian_filter(d, 1.0)
    noise = 1.4826 * float(np.median(np.abs(fine - np.median(fine)))) / (2.0 * math.sqrt(math.pi) * _SMOOTH)
    contrast = float(ds[mask].mean() - ds[~mask].mean())
    # Touching nuclei are cut apart along the valleys of the stain: a watershed of the
    # density seeded by the maxima that rise above their surroundings by a fixed fraction of
    # the nuclear contrast.  Geodesic, so it does not depend on the scale.
    dyn = _VALLEY_DEPTH * float(np.percentile(ds[mask], 99) - t)
    peaks = h_maxima(ds, dyn).astype(bool) & mask if dyn > 0 else None
    if peaks is not None and seed_gap >= 2:
        from skimage.morphology import disk
        peaks = ndi.binary_dilation(peaks, disk(int(seed_gap // 2))) & mask
    seeds, n_seeds = ndi.label(peaks) if peaks is not None else (None, 0)
    if n_seeds:
        labels = watershed(-ds, seeds, mask=mask, watershed_line=True)
        mask = labels > 0
    else:
        labels, n_seeds = ndi.label(mask)
    radii = 0.5 * w_range[0] * 2.0 ** (np.arange(0, int(np.ceil(per_octave * np.log2(w_range[1] / w_range[0]))) + 1)
                                       / per_octave)
    level = local_thickness(mask, radii)
    # A pixel at level k lies between radii[k-1] and radii[k]: it counts as their geometric
    # mean.  Distances are measured to the centre of the first background pixel, half a pixel
    # beyond the edge, so the width across is twice the radius less one pixel.
    widths = np.concatenate([[0.0], 2.0 * radii * 2.0 ** (0.5 / per_octave) - 1.0])
    weight = np.where(mask, np.maximum(ds - t, 0.0) ** 2, 0.0)
    hist = np.bincount(level.ravel(), weights=weight.ravel(), minlength=widths.size)[1:]
    if not hist.sum() > 0:
        return None
    values = widths[1:]
    q10, q25, q50, q75, q90 = _hist_quantiles(values, hist, [0.1, 0.25, 0.5, 0.75, 0.9])
    # the grid quantises widths: the weighted geometric mean of the central 80 % is smooth
    mid = (values >= q10 * 0.999) & (values <= q90 * 1.001) & (hist > 0)
    width = float(np.exp(np.average(np.log(values[mid]), weights=hist[mid]))) if mid.any() else float(q50)
    # objects: the cut regions at least half as wide as the typical nucleus (specks and
    # texture fragments do not count)
    idx = np.arange(1, int(labels.max()) + 1)
    if idx.size == 0:
        return None
    obj_w = widths[ndi.maximum(level, labels, idx).astype(int)]
    obj_weight = ndi.sum(weight, labels, idx)
    big = obj_w >= 0.5 * width
    wb = obj_weight[big]
    n_eff = float(wb.sum() ** 2 / (wb ** 2).sum()) if wb.sum() > 0 else 0.0
    return _Pass(width=width, q25=float(q25), q75=float(q75), n_objects=int(big.sum()),
                 n_eff=n_eff, contrast=contrast, noise=noise, mask_fraction=frac)


def _resample(d: np.ndarray, z: float) -> np.ndarray:
    from skimage.transform import rescale

    if abs(z - 1.0) < 1e-3:
        return d
    return rescale(d, z, order=1, mode="reflect", anti_aliasing=z < 1.0, preserve_range=True)


def _tiles(shape) -> list[tuple[slice, slice]]:
    """The whole image, or a grid of up to 3 x 3 tiles of 1024 px spread over a large one."""
    H, W = shape
    if H * W <= _MAX_PIXELS:
        return [(slice(0, H), slice(0, W))]
    n_r = min(3, max(1, H // _TILE))
    n_c = min(3, max(1, W // _TILE))
    rs = np.linspace(0, max(0, H - _TILE), n_r).astype(int)
    cs = np.linspace(0, max(0, W - _TILE), n_c).astype(int)
    return [(slice(r, min(H, r + _TILE)), slice(c, min(W, c + _TILE))) for r in rs for c in cs]


def _refuse(reason: str, n: int = 0, width: float = float("nan"), spread: float = float("nan"),
            mpp: float = float("nan")) -> PixelSizeEstimate:
    return PixelSizeEstimate(mpp=mpp, low=float("nan") if not np.isfinite(mpp) else mpp,
                             high=float("nan") if not np.isfinite(mpp) else mpp, n_nuclei=n,
                             basis=f"no estimate: {reason}", confident=False, width_px=width,
                             spread=spread, reason=reason)


# ----------------------------------------------------------------------------- estimate
def estimate_mpp(img: np.ndarray, *, prior_um: float = NUCLEAR_WIDTH_UM, min_nuclei: int = 10,
                 max_spread: float = 2.5, modality: str = "auto",
                 strict: bool = False) -> PixelSizeEstimate:
    """Estimate the pixel size of a tissue image from the width of its nuclei.

    Parameters
    ----------
    img : ndarray, shape (H, W, 3), float32/float64, values in [0, 1]
        RGB brightfield (H&E) image, as :func:`vnumba.io.images.image_to_float` gives it.
        Fluorescence (bright nuclei on a dark background) is accepted as (H, W), (H, W, 1) or
        RGB; see :func:`nuclear_density`.  At least 16 x 16 pixels.
    prior_um : float
        Typical nuclear width in µm (:data:`NUCLEAR_WIDTH_UM`).
    min_nuclei : int
        Fewer nucleus-sized objects than this: not confident.
    max_spread : float
        Largest weighted 75th / 25th percentile ratio of the nuclear widths that is still
        one population of nuclei (> 1).
    modality : {"auto", "brightfield", "fluorescence"}
    strict : bool
        Raise :class:`PixelSizeError` instead of returning an estimate that is not confident.

    Returns
    -------
    PixelSizeEstimate

    Raises
    ------
    TypeError
        ``img`` is not a float numpy array.
    ValueError
        Wrong shape, values outside [0, 1], NaN/inf, or a bad parameter.
    PixelSizeError
        With ``strict=True``, when the estimate is not confident.
    """
    if not (isinstance(prior_um, (int, float)) and math.isfinite(prior_um) and prior_um > 0):
        raise ValueError(f"prior_um must be a positive number, got {prior_um!r}")
    if not (isinstance(min_nuclei, (int, np.integer)) and min_nuclei >= 1):
        raise ValueError(f"min_nuclei must be an integer >= 1, got {min_nuclei!r}")
    if not (isinstance(max_spread, (int, float)) and max_spread > 1):
        raise ValueError(f"max_spread must be a number > 1, got {max_spread!r}")
    density, modality = nuclear_density(img, modality)
    hue = _red_blue_ratio(img, density) if modality == "brightfield" else None
    est = _estimate(density, modality, float(prior_um), int(min_nuclei), float(max_spread), hue)
    if strict:
        require_confident(est)
    return est


def _red_blue_ratio(img: np.ndarray, density: np.ndarray) -> float | None:
    """Red over blue optical density of the most stained pixels (Otsu's class of the lightly
    smoothed density): about 2.2 for haematoxylin, less where eosin mixes in; far more for a
    blue tissue dye, ink or pigment, which colour deconvolution also counts as haematoxylin."""
    from skimage.filters import threshold_otsu

    ds = ndi.gaussian_filter(density, 1.0)
    if not np.ptp(ds) > 0:
        return None
    m = ds > threshold_otsu(ds)
    od = -np.log(np.clip(img[m].astype(np.float64), 1.0 / 255.0, 1.0))
    r, b = od[:, 0].mean(), od[:, 2].mean()
    return float(r / b) if b > 0 else float("inf")


def _estimate(density, modality, prior_um, min_nuclei, max_spread, hue) -> PixelSizeEstimate:
    tiles = [density[t] for t in _tiles(density.shape)]
    # pass 1: rough width, on a copy of at most ~0.5 Mpx per tile, coarse grid
    z1 = min(1.0, math.sqrt(_FIRST_PASS_PIXELS / tiles[0].size))
    first = [p for p in (_measure(_resample(x, z1), 2, (2.0, 256.0)) for x in tiles) if p is not None]
    if not first:
        return _refuse("no stained structure (blank or constant image)")
    width = float(np.median([p.width for p in first])) / z1
    if width < 0.8 * MIN_WIDTH_PX:
        return _refuse(f"no structure wider than {MIN_WIDTH_PX:g} px (noise, or no nuclei)", width=width)
    # pass 2 (and 3): resampled so that the typical nucleus is CANONICAL_WIDTH_PX wide
    for _ in range(2):
        z = float(np.clip(CANONICAL_WIDTH_PX / width, 1.0 / 32.0, 3.0))
        lo, hi = CANONICAL_WIDTH_PX / 4, CANONICAL_WIDTH_PX * 4
        passes = [p for p in (_measure(_resample(x, z), 4, (lo, hi), _SEED_GAP) for x in tiles)
                  if p is not None]
        if not passes:
            return _refuse("no nuclei found at the nuclear scale", width=width)
        new = float(np.median([p.width for p in passes])) / z
        moved = abs(math.log(new / width)) > math.log(1.15)
        width = new
        if not moved:
            break
    n_obj = int(sum(p.n_objects for p in passes))
    n_eff = float(sum(p.n_eff for p in passes))
    q25 = float(np.median([p.q25 for p in passes])) / z
    q75 = float(np.median([p.q75 for p in passes])) / z
    spread = q75 / q25 if q25 > 0 else float("inf")
    contrast = float(np.median([p.contrast for p in passes]))
    noise = float(np.median([p.noise for p in passes]))
    frac = float(np.median([p.mask_fraction for p in passes]))
    mpp = prior_um / width
    # interval: the prior's spread between tissues and the sampling error of the median width
    # (a median of n has a relative error of about 1.25 * (IQR / 1.35) / sqrt(n))
    stat = 1.25 * math.log(max(spread, 1.0)) / 1.35 / math.sqrt(max(n_eff, 1.0))
    rel = math.hypot(PRIOR_SPREAD, stat)
    low, high = mpp * math.exp(-rel), mpp * math.exp(rel)

    reason = ""
    if not contrast > _MIN_CONTRAST_SNR * noise:
        reason = (f"stain contrast {contrast:.2g} is not above the noise ({noise:.2g}): "
                  "a blank or noise image")
    elif modality == "brightfield" and contrast < _MIN_CONTRAST_OD:
        reason = (f"stain contrast {contrast:.2g} OD is too faint (< {_MIN_CONTRAST_OD:g}): "
                  "a blank or unstained image")
    elif hue is not None and hue > _MAX_RED_BLUE:
        reason = (f"the darkest objects are not coloured like haematoxylin (red/blue optical "
                  f"density {hue:.1f} > {_MAX_RED_BLUE:g}): a dye, ink or pigment")
    elif width < MIN_WIDTH_PX:
        reason = f"nuclei only {width:.1f} px wide (< {MIN_WIDTH_PX:g} px): too small to measure"
    elif not _MASK_FRACTION[0] <= frac <= _MASK_FRACTION[1]:
        reason = f"nuclear mask covers {100 * frac:.1f} % of the image"
    elif n_obj < min_nuclei:
        reason = f"only {n_obj} nuclei found (< {min_nuclei})"
    elif spread > max_spread:
        reason = (f"nuclear widths too varied (75th/25th percentile {spread:.2f} > "
                  f"{max_spread:g}): not one population of nuclei")
    kind = "haematoxylin" if modality == "brightfield" else "fluorescent"
    basis = (f"typical width of {n_obj} {kind}-stained nuclei = {width:.1f} px "
             f"(quartiles {q25:.1f}-{q75:.1f}); a typical nucleus is ~{prior_um:g} um wide")
    if reason:
        return PixelSizeEstimate(mpp=mpp, low=low, high=high, n_nuclei=n_obj,
                                 basis=basis + f"; not confident: {reason}", confident=False,
                                 width_px=width, spread=spread, reason=reason)
    return PixelSizeEstimate(mpp=mpp, low=low, high=high, n_nuclei=n_obj, basis=basis,
                             confident=True, width_px=width, spread=spread)


def require_confident(est: PixelSizeEstimate, name: str = "image") -> PixelSizeEstimate:
    """Return ``est`` if it is confident, else raise :class:`PixelSizeError`.

    Parameters
    ----------
    est : PixelSizeEstimate
    name : str
        What the message names (the file).

    Raises
    ------
    TypeError
        ``est`` is not a :class:`PixelSizeEstimate`.
    PixelSizeError
        One line: the image, why, and to give ``--mpp``.
    """
    if not isinstance(est, PixelSizeEstimate):
        raise TypeError(f"est must be a PixelSizeEstimate, got {type(est).__name__}")
    if not est.confident:
        why = est.reason or "the estimate is not reliable"
        raise PixelSizeError(f"{name}: no pixel size in the file and it cannot be estimated "
                             f"({why}); give --mpp (e.g. 0.25 for 40x, 0.5 for 20x)")
    return est
