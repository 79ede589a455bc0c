"""Layers: RGBA images holding one object category each, their filters, and merging.

Merging follows the article: layers are composited from the bottom (first in the list) to the
top (last); where a layer is opaque (alpha 1) it replaces what lies below, where it is
transparent (alpha 0) the lower layers show, and where all layers are transparent the result
stays transparent.  Fractional alpha (e.g. after a blur filter) blends with the standard
"over" operator.

Ellipse objects are rasterised by pixel centre: pixel (y, x) belongs to the ellipse with centre
(cy, cx), semi-axes (a, b) and inclination theta when
``((dx cos t + dy sin t) / a)^2 + ((-dx sin t + dy cos t) / b)^2 <= 1``, ``dx = x - cx``,
``dy = y - cy``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numba import njit
from scipy import ndimage

from .params import param

__all__ = ["Layer", "FilterSpec", "merge_layers", "apply_filters", "blur_rgba", "over_backdrop",
           "place_ellipses", "paint_ellipses", "colorize"]


@dataclass(frozen=True)
class FilterSpec:
    """One per-layer filter (an entry of a layer's ``filters`` array in a script).

    ``kind = "blur"``: Gaussian blur with standard deviation ``sigma`` pixels of the
    premultiplied colour and the alpha channel (soft edges).  ``kind = "noise"``: additive
    white Gaussian noise of standard deviation ``sigma`` on the layer's colour.
    ``apply_to = "noisy"`` filters only the noisy rendering; ``"both"`` (blur only) changes
    the layer itself, i.e. also the clean target (e.g. out-of-focus structures).
    """

    kind: Literal["blur", "noise"]
    sigma: float = param(1.0, ge=0.0, le=50.0)
    apply_to: Literal["noisy", "both"] = "noisy"

    def check(self):
        if self.kind == "noise" and self.apply_to == "both":
            yield ("apply_to", "a noise filter can only apply to the noisy image")


@dataclass
class Layer:
    """One layer of a sample.

    Attributes
    ----------
    name, category : str
        Layer name (unique in a script) and object category it holds.
    rgba : ndarray (H, W, 4) float32
        Clean colour (each object's mean colour) and alpha in [0, 1]; alpha is 1 on object
        pixels and 0 elsewhere unless a ``both`` filter softened it.
    noise : ndarray (H, W, 3) float32 or None
        Additive colour noise of the noisy rendering (only where alpha > 0 matters).
    filters : tuple of FilterSpec
    labels : ndarray (H, W) int32 or None
        Object ids 1..n (0 = no object) for layers of discrete objects (cells, nuclei).
    centers : ndarray (n, 2) float64 or None
        (row, col) centre of object ``id`` at row ``id - 1``.
    axes : ndarray (n, 3) float64 or None
        (a, b, theta) of elliptic objects.
    """

    name: str
    category: str
    rgba: np.ndarray
    noise: np.ndarray | None = None
    filters: tuple = ()
    labels: np.ndarray | None = None
    centers: np.ndarray | None = None
    axes: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        r = self.rgba
        if not isinstance(r, np.ndarray) or r.ndim != 3 or r.shape[2] != 4 or r.dtype != np.float32:
            raise ValueError(f"layer {self.name!r}: rgba must be float32 (H, W, 4), got "
                             f"{getattr(r, 'dtype', type(r))} {getattr(r, 'shape', '')}")
        if self.noise is not None and (self.noise.shape != r.shape[:2] + (3,)
                                       or self.noise.dtype != np.float32):
            raise ValueError(f"layer {self.name!r}: noise must be float32 (H, W, 3)")
        if self.labels is not None and (self.labels.shape != r.shape[:2]
                                        or self.labels.dtype != np.int32):
            raise ValueError(f"layer {self.name!r}: labels must be int32 (H, W)")

    @property
    def alpha(self) -> np.ndarray:
        return self.rgba[..., 3]

    @property
    def footprint(self) -> np.ndarray:
        """Pixels covered by the layer's objects (alpha >= 0.5), bool (H, W)."""
        return self.rgba[..., 3] >= 0.5

    def clean_rgba(self) -> np.ndarray:
        """The layer as it enters the clean target (``rgba``; ``both`` filters are baked in)."""
        return self.rgba

    def noisy_rgba(self, rng: np.random.Generator) -> np.ndarray:
        """The layer as it enters the noisy image: colour + noise, then ``noisy`` filters.

        Returns
        -------
        ndarray (H, W, 4) float32 (colour clipped to [0, 1])
        """
        if self.noise is not None:
            out = _add_noise(self.rgba, self.noise)
        else:
            out = self.rgba.copy()
        noisy_filters = [f for f in self.filters if f.apply_to == "noisy"]
        if noisy_filters:
            out = apply_filters(out, noisy_filters, rng)
            np.clip(out[..., :3], 0.0, 1.0, out=out[..., :3])
        return out


@njit(cache=True)
def _add_noise(rgba, noise):
    H, W, _ = rgba.shape
    out = np.empty_like(rgba)
    for i in range(H):
        for j in range(W):
            for c in range(3):
                v = rgba[i, j, c] + noise[i, j, c]
                out[i, j, c] = min(max(v, 0.0), 1.0)
            out[i, j, 3] = rgba[i, j, 3]
    return out


def blur_rgba(rgba: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an RGBA layer (premultiplied colour and alpha), float32 (H, W, 4).

    Blurring premultiplied colour keeps transparent pixels from bleeding their (meaningless)
    colour into objects; edges get fractional alpha.
    """
    if sigma <= 0:
        return rgba
    pm = rgba.copy()
    pm[..., :3] *= rgba[..., 3:4]
    pm = ndimage.gaussian_filter(pm, sigma=(sigma, sigma, 0), mode="nearest")
    al = pm[..., 3:4]
    safe = np.where(al > 1e-6, al, np.float32(1.0))
    pm[..., :3] /= safe
    pm[..., :3] *= al > 1e-6
    np.clip(pm[..., 3], 0.0, 1.0, out=pm[..., 3])
    return pm.astype(np.float32, copy=False)


def apply_filters(rgba: np.ndarray, filters, rng: np.random.Generator | None) -> np.ndarray:
    """Apply ``filters`` (sequence of :class:`FilterSpec`) in order to an RGBA layer."""
    out = rgba
    for f in filters:
        if f.kind == "blur":
            out = blur_rgba(out, f.sigma)
        elif f.kind == "noise":
            if rng is None:
                raise ValueError("a noise filter needs an rng")
            if f.sigma > 0:
                out = out.copy()
                out[..., :3] += f.sigma * rng.standard_normal(out.shape[:2] + (3,), dtype=np.float32)
        else:  # pragma: no cover - FilterSpec validation forbids it
            raise ValueError(f"unknown filter {f.kind!r}")
    return out


@njit(cache=True)
def _over_accumulate(acc, layer):
    # acc: premultiplied colour (0..2) and alpha (3); returns False on invalid input
    H, W, _ = layer.shape
    for i in range(H):
        for j in range(W):
            a = layer[i, j, 3]
            if not (0.0 <= a <= 1.0):
                return False
            k = 1.0 - a
            for c in range(3):
                v = layer[i, j, c]
                if not np.isfinite(v):
                    return False
                acc[i, j, c] = acc[i, j, c] * k + v * a
            acc[i, j, 3] = acc[i, j, 3] * k + a
    return True


@njit(cache=True)
def _unpremultiply(acc):
    H, W, _ = acc.shape
    for i in range(H):
        for j in range(W):
            a = acc[i, j, 3]
            for c in range(3):
                acc[i, j, c] = acc[i, j, c] / a if a > 0 else 0.0


def merge_layers(layers) -> np.ndarray:
    """Composite layers bottom (first) to top (last) with the "over" operator.

    Parameters
    ----------
    layers : sequence of :class:`Layer` (their clean ``rgba``) or of ndarray (H, W, 4)
        RGBA float with alpha in [0, 1].

    Returns
    -------
    ndarray (H, W, 4) float32
        Where the top-most opaque layer covers a pixel, its colour; alpha 0 where every layer
        is transparent.

    Raises
    ------
    ValueError
        Shapes differ, alpha is outside [0, 1], or values are not finite.
    """
    arrs = [l.rgba if isinstance(l, Layer) else np.asarray(l) for l in layers]
    if not arrs:
        raise ValueError("merge_layers needs at least one layer")
    shape = arrs[0].shape
    if len(shape) != 3 or shape[2] != 4:
        raise ValueError(f"layers must be (H, W, 4), got {shape}")
    acc = np.zeros(shape, dtype=np.float32)
    for k, a in enumerate(arrs):
        if a.shape != shape:
            raise ValueError(f"layer {k} has shape {a.shape}, expected {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"layer {k} must be float, got {a.dtype}")
        if not _over_accumulate(acc, np.ascontiguousarray(a, dtype=np.float32)):
            raise ValueError(f"layer {k}: alpha must lie in [0, 1] and values must be finite")
    _unpremultiply(acc)
    return acc


@njit(cache=True)
def _colorize(labels, table):
    H, W = labels.shape
    out = np.empty((H, W, table.shape[1]), dtype=np.float32)
    for i in range(H):
        for j in range(W):
            t = labels[i, j]
            for c in range(table.shape[1]):
                out[i, j, c] = table[t, c]
    return out


def colorize(labels, colors) -> np.ndarray:
    """RGBA layer from object labels: object ``id`` gets ``colors[id - 1]`` and alpha 1.

    Parameters
    ----------
    labels : ndarray (H, W) int32, values in 0..n
    colors : ndarray (n, 3) float

    Returns
    -------
    ndarray (H, W, 4) float32 (transparent black where ``labels == 0``)
    """
    lab = np.ascontiguousarray(labels)
    col = np.asarray(colors, dtype=np.float32).reshape(-1, 3)
    if lab.ndim != 2 or lab.dtype != np.int32:
        raise TypeError("labels must be a 2-D int32 array")
    if lab.size and (lab.min() < 0 or lab.max() > col.shape[0]):
        raise ValueError(f"labels must lie in 0..{col.shape[0]}")
    table = np.zeros((col.shape[0] + 1, 4), dtype=np.float32)
    table[1:, :3] = col
    table[1:, 3] = 1.0
    return _colorize(lab, table)


def over_backdrop(rgba: np.ndarray, backdrop) -> np.ndarray:
    """Flatten RGBA (H, W, 4) onto an opaque backdrop colour; returns float32 (H, W, 3)."""
    al = rgba[..., 3:4]
    return (rgba[..., :3] * al + np.asarray(backdrop, np.float32) * (1.0 - al)).astype(np.float32)


# --------------------------------------------------------------------------- ellipses


@njit(cache=True)
def _paint_one(labels, cy, cx, a, b, th, lab_id, clip_labels, clip_id, region, check_only,
               blocked, no_overlap):
    # Returns True if the ellipse would be acceptable (check_only) / was painted.
    H, W = labels.shape
    c = np.cos(th)
    s = np.sin(th)
    r = max(a, b)
    y0 = max(0, int(np.floor(cy - r)))
    y1 = min(H - 1, int(np.ceil(cy + r)))
    x0 = max(0, int(np.floor(cx - r)))
    x1 = min(W - 1, int(np.ceil(cx + r)))
    ia2 = 1.0 / (a * a)
    ib2 = 1.0 / (b * b)
    for y in range(y0, y1 + 1):
        dy = y - cy
        for x in range(x0, x1 + 1):
            dx = x - cx
            u = dx * c + dy * s
            v = -dx * s + dy * c
            if u * u * ia2 + v * v * ib2 <= 1.0:
                if check_only:
                    if blocked[y, x] or (no_overlap and labels[y, x] != 0):
                        return False
                else:
                    if clip_id >= 0 and clip_labels[y, x] != clip_id:
                        continue
                    if region.shape[0] > 0 and not region[y, x]:
                        continue
                    labels[y, x] = lab_id
    return True


@njit(cache=True)
def _place(params, labels, region, clip_region, blocked, centre_forbidden, no_overlap,
           max_count, first_id):
    H, W = labels.shape
    n = params.shape[0]
    accepted = np.empty(n, dtype=np.int64)
    na = 0
    empty_b = np.zeros((0, 0), dtype=np.bool_)
    empty_i = np.zeros((0, 0), dtype=np.int32)
    for k in range(n):
        if na >= max_count:
            break
        cy = params[k, 0]
        cx = params[k, 1]
        iy = int(np.floor(cy + 0.5))
        ix = int(np.floor(cx + 0.5))
        if iy < 0 or iy >= H or ix < 0 or ix >= W:
            continue
        if not region[iy, ix] or centre_forbidden[iy, ix]:
            continue
        if not _paint_one(labels, cy, cx, params[k, 2], params[k, 3], params[k, 4], 0,
                          empty_i, -1, empty_b, True, blocked, no_overlap):
            continue
        _paint_one(labels, cy, cx, params[k, 2], params[k, 3], params[k, 4], first_id + na,
                   empty_i, -1, region if clip_region else empty_b, False, blocked, no_overlap)
        accepted[na] = k
        na += 1
    return accepted[:na]


@njit(cache=True)
def _paint(params, ids, labels, clip_labels, clip):
    empty_b = np.zeros((0, 0), dtype=np.bool_)
    for k in range(params.shape[0]):
        _paint_one(labels, params[k, 0], params[k, 1], params[k, 2], params[k, 3], params[k, 4],
                   ids[k], clip_labels, ids[k] if clip else -1, empty_b, False, empty_b, False)


def _check_params(params) -> np.ndarray:
    p = np.ascontiguousarray(np.asarray(params, dtype=np.float64))
    if p.ndim != 2 or p.shape[1] != 5:
        raise ValueError(f"ellipse params must have shape (n, 5) [cy, cx, a, b, theta], got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("ellipse params contain NaN or inf")
    if p.shape[0] and (np.any(p[:, 2] <= 0) or np.any(p[:, 3] <= 0)):
        raise ValueError("ellipse semi-axes must be > 0")
    return p


def _bool_map(m, shape, name, default):
    if m is None:
        return np.full(shape, default, dtype=np.bool_)
    a = np.asarray(m)
    if a.shape != shape or a.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool array of shape {shape}, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def place_ellipses(shape, params, *, region=None, clip_region: bool = False, blocked=None,
                   centre_forbidden=None, no_overlap: bool = True, max_count: int | None = None,
                   labels=None):
    """Place candidate ellipses in order, accepting those that satisfy the placement rules.

    A candidate is accepted when its centre pixel lies in the image and in ``region`` and not
    in ``centre_forbidden``, none of its pixels is ``blocked``, and (``no_overlap``) none of
    its pixels is already covered by an accepted ellipse.  Accepted ellipses get ids
    ``1, 2, ...`` (continuing after ``labels.max()`` when ``labels`` is given) and are painted
    into the label image; later ellipses overwrite earlier ones where overlap is allowed.

    Parameters
    ----------
    shape : tuple (H, W)
    params : array_like (n, 5) float
        Candidates [cy, cx, a, b, theta] (rows, pixels, radians).
    region, blocked, centre_forbidden : ndarray (H, W) bool, optional
    clip_region : bool
        Paint only the part inside ``region``.
    no_overlap : bool
    max_count : int, optional
        Stop after this many acceptances.
    labels : ndarray (H, W) int32, optional
        Existing label image to continue (modified in place).

    Returns
    -------
    labels : ndarray (H, W) int32
    accepted : ndarray (m,) int64
        Indices into ``params`` of the accepted candidates, in id order.
    """
    shape = tuple(int(v) for v in shape)
    p = _check_params(params)
    if labels is None:
        labels = np.zeros(shape, dtype=np.int32)
    elif labels.shape != shape or labels.dtype != np.int32 or not labels.flags.c_contiguous:
        raise ValueError("labels must be a C-contiguous int32 array of the given shape")
    reg = _bool_map(region, shape, "region", True)
    blk = _bool_map(blocked, shape, "blocked", False)
    cf = _bool_map(centre_forbidden, shape, "centre_forbidden", False)
    mc = p.shape[0] if max_count is None else int(max_count)
    first = int(labels.max()) + 1 if labels.size else 1
    acc = _place(p, labels, reg, bool(clip_region), blk, cf, bool(no_overlap), mc, first)
    return labels, acc


def paint_ellipses(shape, params, ids, *, clip_labels=None, labels=None) -> np.ndarray:
    """Paint ellipses with given ids; with ``clip_labels`` only where ``clip_labels == id``.

    Parameters
    ----------
    shape : tuple (H, W)
    params : array_like (n, 5) float
    ids : array_like (n,) int
    clip_labels : ndarray (H, W) int32, optional
        E.g. the parent cells' labels, so nucleus ``id`` stays inside cell ``id``.
    labels : ndarray (H, W) int32, optional
        Painted in place (default: a new zero array).

    Returns
    -------
    ndarray (H, W) int32
    """
    shape = tuple(int(v) for v in shape)
    p = _check_params(params)
    idv = np.ascontiguousarray(np.asarray(ids, dtype=np.int32))
    if idv.shape != (p.shape[0],):
        raise ValueError("ids must have one entry per ellipse")
    if labels is None:
        labels = np.zeros(shape, dtype=np.int32)
    elif labels.shape != shape or labels.dtype != np.int32 or not labels.flags.c_contiguous:
        raise ValueError("labels must be a C-contiguous int32 array of the given shape")
    if clip_labels is None:
        cl = np.zeros((0, 0), dtype=np.int32)
        clip = False
    else:
        cl = np.ascontiguousarray(np.asarray(clip_labels))
        if cl.shape != shape or cl.dtype != np.int32:
            raise ValueError("clip_labels must be int32 of the given shape")
        clip = True
    _paint(p, idv, labels, cl, clip)
    return labels
