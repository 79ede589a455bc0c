"""Scenario 3 of Effland et al. (2019): tumour nuclei in H&E melanoma among look-alike immune cells.

The generator mixes real texture into synthetic geometry (article, "Stochastic generation of
training data", and Table 1).  Layers, bottom to top:

1. ``background``: coloured correlated noise over the whole image.
2. ``vessels``: one (``regions.vessel``) of eleven (``regions.count``) fast-marching regions
   of a random velocity field, filled with coloured noise.
3. ``connective``: ribbons of connective tissue lining the vessel regions from inside:
   points of the vessel regions whose fast-marching travel time from the tumour regions (under
   ``connective.fields`` random velocity fields) falls into a random interval.
4. ``tumour_cells``: grown by fast marching from the tumour nuclei (the initial front) over a
   random velocity field up to a travel time ``tumour_cells.growth_time`` (the article's "fixed
   number of iterations"); each pixel goes to the nucleus whose front arrives first.  Texture:
   square real patches on a lattice, one colour cohort per cell, overlapping and blended;
   cell contours are drawn in the contour colour.
5. ``tumour_nuclei``: real tumour-nucleus patches from the reference bundle, randomly rotated
   (and scaled), in the tumour regions (the other ten of eleven regions), without overlap.
6. ``immune_cells``: ellipses placed at random (partly in clusters), moderate overlap with
   each other allowed (at most ``immune_cells.max_overlap`` of a new cell's area), textured
   like the tumour cells from immune-cell patches.

Target mask: the visible pixels of the tumour nuclei, i.e. those not covered by a layer above
them (the immune cells).

The real material comes from a reference bundle (:mod:`synth.reference`).  The script names it
in ``[reference].path``: an absolute path, or a relative one resolved against the script's
folder first and then the current working directory; the ``reference`` argument of
:func:`generate` (``python -m synth generate scenario3 --reference FILE``) overrides it.
All lengths in the script are pixels at the script's ``mpp``; when the bundle records a
different pixel size, patches are rescaled by ``bundle.mpp / script.mpp`` on load.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from .color import ColorSpec, color_noise, sample_object_colors
from .fmm import fmm_labels, fmm_regions, random_speed_field, region_boundaries, travel_time
from .generator import RenderSpec, Sample, compose
from .layers import FilterSpec, Layer, apply_filters
from .noise import gaussian_random_field
from .reference import ReferenceBundle, load_reference
from .script import ParseContext, Script, param, register_scenario

__all__ = [
    "LAYER_NAMES", "SpeedSpec", "ReferenceSpec", "RegionsSpec", "ConnectiveSpec", "NucleiSpec",
    "TumourCellSpec", "ImmuneSpec", "Scenario3Colors", "MaskSpec",
    "rotate_patch", "lattice_texture", "texture_cells", "grow_cells", "place_nuclei",
    "place_immune_cells", "visible_mask", "speed_field", "vessel_regions", "resolve_reference",
    "PreparedReference", "prepare_reference", "generate",
]

#: Layer names, bottom to top (the article's order).
LAYER_NAMES = ("background", "vessels", "connective", "tumour_cells", "tumour_nuclei",
               "immune_cells")


# --------------------------------------------------------------------------- script schema


@dataclass(frozen=True)
class SpeedSpec:
    """Random velocity field ``max(mean + std * Z, minimum)``, Z a Gaussian field of
    correlation length ``corr`` pixels (:func:`synth.fmm.random_speed_field`)."""

    mean: float = param(1.0, gt=0.0, le=100.0)
    std: float = param(0.3, ge=0.0, le=100.0)
    corr: float = param(10.0, ge=0.0, le=1000.0)
    minimum: float = param(0.05, gt=0.0, le=100.0)


@dataclass(frozen=True)
class ReferenceSpec:
    """``[reference]``: the reference bundle and which of its colour statistics to use.

    ``colors`` lists colour classes (``background``, ``stroma``, ``vessel``) whose mean and
    pixel covariance are taken from the bundle when it has valid statistics for them; the
    ``[colors.*]`` values of the script serve otherwise.  ``stroma`` feeds the connective layer.
    """

    path: str = "reference.h5"
    colors: tuple[Literal["background", "stroma", "vessel"], ...] = ()


@dataclass(frozen=True)
class RegionsSpec:
    """``[regions]``: fast-marching region decomposition (seeds uniform in the image)."""

    count: int = param(11, ge=2, le=1000)
    vessel: int = param(1, ge=0, le=999)
    speed: SpeedSpec = field(default_factory=lambda: SpeedSpec(corr=40.0))

    def check(self):
        if self.vessel >= self.count:
            yield ("vessel", f"must be < count ({self.count}): tumour needs a region")


@dataclass(frozen=True)
class ConnectiveSpec:
    """``[connective]``: ribbons inside the vessel regions along their border.

    For each of ``fields`` random velocity fields the travel time ``T`` from the tumour
    regions is computed; pixels of a vessel region with ``start <= T < start + width`` (both
    drawn uniformly from the given ranges per field) become connective tissue.
    """

    fields: int = param(2, ge=0, le=10)
    start: tuple[float, float] = param((0.0, 3.0), ge=0.0, le=1000.0)
    width: tuple[float, float] = param((3.0, 10.0), gt=0.0, le=1000.0)
    speed: SpeedSpec = field(default_factory=lambda: SpeedSpec(corr=15.0, std=0.4))

    def check(self):
        for k in ("start", "width"):
            lo, hi = getattr(self, k)
            if lo > hi:
                yield (k, f"range must be [low, high] with low <= high, got {[lo, hi]}")


@dataclass(frozen=True)
class NucleiSpec:
    """``[tumour_nuclei]``: real nucleus patches, random rotation and scale, no overlap."""

    count: tuple[int, int] = param((14, 26), ge=0, le=10000)
    min_gap: float = param(6.0, ge=0.0, le=100.0, doc="pixels between two nuclei at least")
    scale: tuple[float, float] = param((0.9, 1.1), gt=0.0, le=10.0)
    tries: int = param(30, ge=1, le=10000, doc="placement attempts per wanted nucleus")

    def check(self):
        for k in ("count", "scale"):
            lo, hi = getattr(self, k)
            if lo > hi:
                yield (k, f"range must be [low, high] with low <= high, got {[lo, hi]}")


@dataclass(frozen=True)
class TumourCellSpec:
    """``[tumour_cells]``: fast-marching growth from the nuclei and patch texture."""

    growth_time: float = param(15.0, gt=0.0, le=1000.0,
                               doc="travel-time threshold of the growth (pixels at speed 1)")
    speed: SpeedSpec = field(default_factory=lambda: SpeedSpec(corr=8.0, std=0.3))
    patch_overlap: int = param(2, ge=0, le=100)
    contour_opacity: float = param(0.35, ge=0.0, le=1.0)


@dataclass(frozen=True)
class ImmuneSpec:
    """``[immune_cells]``: randomly placed patch-textured ellipses, moderate overlap.

    A fraction ``cluster_fraction`` of the cells is placed around ``clusters`` random centres
    (normal offsets of standard deviation ``cluster_sigma``), the rest uniformly.  Semi-axes:
    ``a`` uniform in ``semi_axis``, ``b = a * r`` with ``r`` uniform in ``axis_ratio``,
    inclination uniform.
    """

    count: tuple[int, int] = param((5, 40), ge=0, le=10000)
    semi_axis: tuple[float, float] = param((8.0, 11.0), gt=0.0, le=1000.0)
    axis_ratio: tuple[float, float] = param((0.75, 1.0), gt=0.0, le=1.0)
    max_overlap: float = param(0.3, ge=0.0, le=1.0)
    cluster_fraction: float = param(0.6, ge=0.0, le=1.0)
    clusters: tuple[int, int] = param((1, 2), ge=1, le=100)
    cluster_sigma: float = param(25.0, gt=0.0, le=10000.0)
    patch_overlap: int = param(2, ge=0, le=100)
    tries: int = param(20, ge=1, le=10000)

    def check(self):
        for k in ("count", "semi_axis", "axis_ratio", "clusters"):
            lo, hi = getattr(self, k)
            if lo > hi:
                yield (k, f"range must be [low, high] with low <= high, got {[lo, hi]}")


@dataclass(frozen=True)
class Scenario3Colors:
    """``[colors]``: noise-layer colours (:class:`synth.color.ColorSpec`) and the contour colour
    of tumour cells (only its ``mean`` is used)."""

    background: ColorSpec
    vessel: ColorSpec
    stroma: ColorSpec
    contour: ColorSpec


@dataclass(frozen=True)
class MaskSpec:
    """``[mask]``: the target mask is the visible part of ``target``'s objects, i.e. its
    footprint minus the footprints of all layers above it."""

    target: Literal["tumour_nuclei"] = "tumour_nuclei"


def _parse_filters(value, ctx: ParseContext, key: str):
    """``[filters]``: per-layer filter lists, e.g. ``tumour_nuclei = [{kind = "blur"}]``."""
    if not isinstance(value, dict):
        ctx.error(key, f"must be a table of layer name -> array of filters, got {value!r}")
    out = {}
    for name, lst in value.items():
        if name not in LAYER_NAMES:
            ctx.error(f"{key}.{name}", f"unknown layer (layers: {', '.join(LAYER_NAMES)})")
        out[name] = ctx.convert(lst, tuple[FilterSpec, ...], f"{key}.{name}")
    return out


_SECTIONS = {
    "reference": ReferenceSpec,
    "regions": RegionsSpec,
    "connective": ConnectiveSpec,
    "tumour_nuclei": NucleiSpec,
    "tumour_cells": TumourCellSpec,
    "immune_cells": ImmuneSpec,
    "colors": Scenario3Colors,
    "filters": _parse_filters,
    "render": RenderSpec,
    "mask": MaskSpec,
}


# --------------------------------------------------------------------------- geometry


def rotate_patch(rgba: np.ndarray, angle: float, scale: float = 1.0) -> np.ndarray:
    """Rotate (and scale) a premultiplied RGBA nucleus patch with bilinear interpolation.

    The output box is just large enough for the rotated patch.  Colour and alpha are
    interpolated premultiplied, then alpha is thresholded at 1/2, so the result is again a
    binary-alpha patch whose area equals the input's up to interpolation error along the
    contour; colour is un-premultiplied where alpha is 1.

    Parameters
    ----------
    rgba : ndarray of uint8, shape (h, w, 4)
        RGB zero where alpha is zero (as stored in a reference bundle), alpha 0 or 255.
    angle : float
        Counter-clockwise rotation in degrees.
    scale : float
        Scale factor (> 0).

    Returns
    -------
    ndarray of float32, shape (h', w', 4)
        RGB in [0, 1] (0 outside the nucleus), alpha in {0, 1}.
    """
    a = _check_patch(rgba)
    if not np.isfinite(angle):
        raise ValueError(f"angle must be finite, got {angle!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    rot = _rotation(a.shape[0], a.shape[1], angle, scale)
    al, box = _rotated_alpha(a, rot)
    if box is None:
        return np.zeros((1, 1, 4), np.float32)
    out = np.empty(al[box].shape + (4,), np.float32)
    out[..., :3] = _rotated_rgb(a, rot, al, box)
    out[..., 3] = al[box] >= 0.5
    return out


def _check_patch(rgba) -> np.ndarray:
    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] != 4 or a.dtype != np.uint8:
        raise ValueError(f"rgba must be uint8 (h, w, 4), got {a.dtype} {a.shape}")
    return a


def _rotation(h: int, w: int, angle: float, scale: float):
    """Inverse matrix, offset and output shape of the rotation about the patch centre."""
    t = np.deg2rad(angle)
    c, s = np.cos(t), np.sin(t)
    # In (row, col) coordinates with rows growing downwards this turns counter-clockwise on
    # screen (angle 90 equals numpy.rot90).
    fwd = scale * np.array([[c, -s], [s, c]])
    half = np.array([h / 2.0, w / 2.0])
    corners = np.array([[0, 0], [0, w], [h, 0], [h, w]], float) - half
    ext = corners @ fwd.T
    H2 = int(np.ceil(np.ptp(ext[:, 0]) - 1e-9)) + 2
    W2 = int(np.ceil(np.ptp(ext[:, 1]) - 1e-9)) + 2
    inv = np.array([[c, s], [-s, c]]) / scale
    # Pixel centres sit at index + 1/2: input centre = inv @ (out centre - half2) + half.
    half2 = np.array([H2 / 2.0, W2 / 2.0])
    offset = half - inv @ half2 + inv @ np.array([0.5, 0.5]) - 0.5
    return inv, offset, (H2, W2)


def _warp(channel: np.ndarray, rot, origin=(0, 0), shape=None) -> np.ndarray:
    """Bilinear warp of one uint8 channel to float32 in [0, 1] (output window at origin)."""
    inv, offset, full = rot
    shape = full if shape is None else shape
    off = offset + inv @ np.asarray(origin, np.float64)
    out = ndi.affine_transform(channel.astype(np.float32), inv, offset=off, output_shape=shape,
                               order=1, mode="constant", cval=0.0)
    out *= np.float32(1.0 / 255.0)
    return out


def _rotated_alpha(a: np.ndarray, rot):
    """Interpolated alpha (H2, W2) and the tight box of its >= 1/2 part (or None)."""
    al = _warp(a[..., 3], rot)
    inside = al >= 0.5
    rows = np.flatnonzero(inside.any(axis=1))
    if rows.size == 0:
        return al, None
    cols = np.flatnonzero(inside.any(axis=0))
    return al, (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


def _rotated_rgb(a: np.ndarray, rot, al: np.ndarray, box) -> np.ndarray:
    """Un-premultiplied colour (h', w', 3) inside ``box``; 0 where alpha < 1/2."""
    origin = (box[0].start, box[1].start)
    alb = al[box]
    inside = alb >= 0.5
    rgb = np.zeros(alb.shape + (3,), np.float32)
    for k in range(3):
        ck = _warp(a[..., k], rot, origin, alb.shape)
        np.divide(ck, alb, out=rgb[..., k], where=inside)
    np.clip(rgb, 0.0, 1.0, out=rgb)
    return rgb


def _blend_window(P: int, overlap: int) -> np.ndarray:
    """(P, P) weights; with stride ``P - overlap`` the shifted copies sum to one."""
    x = np.arange(P, dtype=np.float64)
    if overlap == 0:
        w1 = np.ones(P)
    else:
        w1 = np.minimum(1.0, np.minimum((x + 1) / (overlap + 1), (P - x) / (overlap + 1)))
    return np.outer(w1, w1)


def _accumulate(tiles: np.ndarray, w: np.ndarray, S: int) -> np.ndarray:
    """Sum of weighted tiles (ny, nx, P, P, 3) placed ``S`` apart, divided by the summed weights.

    Tiles of equal row and column parity are ``2 S >= P`` apart and never overlap, so each of
    the four parity classes is laid out at once by a reshape instead of a loop over pixels.
    The window is separable and the lattice a product, so the weight sum is an outer product
    of two 1-D sums.
    """
    ny, nx, P = tiles.shape[0], tiles.shape[1], tiles.shape[2]
    Hc, Wc = (ny - 1) * S + P, (nx - 1) * S + P
    acc = np.zeros((Hc + 2 * S, Wc + 2 * S, 3), np.float32)
    wt = tiles * w[:, :, None]
    if 2 * S >= P:
        for pi in (0, 1):
            for pj in (0, 1):
                t = wt[pi::2, pj::2]
                my, mx = t.shape[:2]
                if my == 0 or mx == 0:
                    continue
                block = np.zeros((my, 2 * S, mx, 2 * S, 3), np.float32)
                block[:, :P, :, :P] = t.transpose(0, 2, 1, 3, 4)
                acc[pi * S:pi * S + 2 * S * my, pj * S:pj * S + 2 * S * mx] += \
                    block.reshape(2 * S * my, 2 * S * mx, 3)
    else:
        for dy in range(P):
            for dx in range(P):
                acc[dy:dy + (ny - 1) * S + 1:S, dx:dx + (nx - 1) * S + 1:S] += wt[:, :, dy, dx]
    w1 = np.sqrt(w.diagonal()).astype(np.float64)  # the 1-D window (w = outer(w1, w1))
    wy = np.zeros(Hc)
    wx = np.zeros(Wc)
    for d in range(P):
        wy[d:d + (ny - 1) * S + 1:S] += w1[d]
        wx[d:d + (nx - 1) * S + 1:S] += w1[d]
    acc = acc[:Hc, :Wc]
    acc /= np.outer(wy, wx).astype(np.float32)[..., None]
    return acc


def lattice_texture(rng: np.random.Generator, patches: np.ndarray, shape, overlap: int,
                    dihedral: bool = True) -> np.ndarray:
    """Texture of random square patches on a lattice, blended where they overlap.

    Lattice sites are ``stride = P - overlap`` apart (random phase); every site gets a
    random patch of ``patches`` (and, with ``dihedral``, a random flip / quarter turn).  Each
    patch is weighted by a separable tent that is 1 in its interior and ramps linearly
    across the ``overlap`` bands, where the weights of adjacent patches sum to one, so the
    texture equals a single patch wherever only one covers a pixel.

    Parameters
    ----------
    rng : numpy.random.Generator
    patches : ndarray of uint8 (n, P, P, 3) or float (values in [0, 1])
    shape : tuple (H, W)
    overlap : int
        ``0 <= overlap < P``.
    dihedral : bool

    Returns
    -------
    ndarray of float32, shape (H, W, 3), values in [0, 1]
    """
    p = np.asarray(patches)
    if p.ndim != 4 or p.shape[3] != 3 or p.shape[1] != p.shape[2] or p.shape[0] < 1:
        raise ValueError(f"patches must be (n, P, P, 3) with n >= 1, got {p.shape}")
    P = p.shape[1]
    if not (0 <= overlap < P):
        raise ValueError(f"overlap must be in [0, {P - 1}] for {P}x{P} patches, got {overlap}")
    H, W = (int(v) for v in shape)
    if p.dtype == np.uint8:
        p = p.astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        p = p.astype(np.float32, copy=False)
    S = P - overlap
    oy, ox = (int(v) for v in rng.integers(0, S, size=2))
    ny = -(-(H + oy - overlap) // S)
    nx = -(-(W + ox - overlap) // S)
    ny, nx = max(ny, 1), max(nx, 1)
    tiles = p[rng.integers(0, p.shape[0], size=(ny, nx))]  # (ny, nx, P, P, 3)
    if dihedral:
        code = rng.integers(0, 8, size=(ny, nx))
        m = (code & 1).astype(bool)
        tiles[m] = tiles[m][:, ::-1]
        m = (code & 2).astype(bool)
        tiles[m] = tiles[m][:, :, ::-1]
        m = (code & 4).astype(bool)
        tiles[m] = tiles[m].transpose(0, 2, 1, 3)
    w = _blend_window(P, overlap).astype(np.float32)
    acc = _accumulate(tiles, w, S)
    return np.ascontiguousarray(acc[oy:oy + H, ox:ox + W])


def texture_cells(rng: np.random.Generator, labels: np.ndarray, cohort_of_cell: np.ndarray,
                  cohort_patches, overlap: int) -> np.ndarray:
    """Colour every cell with a lattice texture of its own cohort.

    Parameters
    ----------
    rng : numpy.random.Generator
    labels : ndarray of int32 (H, W)
        Cell ids ``1..n`` (0 = none).
    cohort_of_cell : ndarray of int (n,)
        Cohort of cell ``id`` at index ``id - 1``.
    cohort_patches : sequence of ndarray (n_k, P, P, 3)
        Patches of each cohort.
    overlap : int

    Returns
    -------
    ndarray of float32, shape (H, W, 3); zero outside the cells.
    """
    lab = np.asarray(labels)
    out = np.zeros(lab.shape + (3,), np.float32)
    coh = np.concatenate([[-1], np.asarray(cohort_of_cell, np.int64)])
    if lab.size and lab.max() >= coh.size:
        raise ValueError("labels contain ids without a cohort")
    pix_coh = coh[lab]
    for k in np.unique(coh[1:]):
        sel = pix_coh == k
        if not sel.any():
            continue
        rows = np.flatnonzero(sel.any(axis=1))
        cols = np.flatnonzero(sel.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        tex = lattice_texture(rng, cohort_patches[int(k)], sel[box].shape, overlap)
        out[box][sel[box]] = tex[sel[box]]
    return out


def grow_cells(nuclei: np.ndarray, speed, growth_time: float, allowed=None) -> np.ndarray:
    """Cells grown by fast marching from their nuclei.

    Every nucleus is an initial front; a pixel joins the cell whose front reaches it first,
    provided it is reached within ``growth_time`` (the travel time of the Eikonal equation
    ``|grad T| speed = 1``).  With constant speed ``v`` a round nucleus of radius ``r`` grows
    into a disc of radius ``r + v * growth_time``.

    Parameters
    ----------
    nuclei : ndarray of int (H, W)
        Nucleus ids ``1..n`` (0 = none).
    speed : ndarray (H, W) or float
        Velocity field (> 0).
    growth_time : float
        Travel-time threshold (>= 0).
    allowed : ndarray of bool (H, W), optional
        Cells are cut to these pixels (the tumour regions).

    Returns
    -------
    ndarray of int32 (H, W)
        Cell ids (those of the nuclei); a nucleus's own pixels belong to its cell.
    """
    nuc = np.asarray(nuclei)
    if nuc.ndim != 2 or not np.issubdtype(nuc.dtype, np.integer):
        raise TypeError(f"nuclei must be a 2-D integer array, got {nuc.dtype} {nuc.shape}")
    if not (np.isfinite(growth_time) and growth_time >= 0):
        raise ValueError(f"growth_time must be >= 0, got {growth_time!r}")
    if not np.any(nuc > 0):
        return np.zeros(nuc.shape, np.int32)
    _, lab = fmm_labels(np.where(nuc > 0, nuc - 1, -1).astype(np.int32), speed, growth_time)
    cells = (lab + 1).astype(np.int32)
    if allowed is not None:
        al = np.asarray(allowed, dtype=bool)
        if al.shape != nuc.shape:
            raise ValueError(f"allowed has shape {al.shape}, nuclei {nuc.shape}")
        cells[~al & (nuc == 0)] = 0
    return cells


def _dilate(mask: np.ndarray, r: float) -> np.ndarray:
    if r <= 0:
        return mask
    k = int(np.ceil(r))
    pad = np.pad(mask, k)
    d = ndi.distance_transform_edt(~pad)
    return (d <= r)


def place_nuclei(rng: np.random.Generator, shape, patches, count: int, region=None,
                 min_gap: float = 0.0, scale=(1.0, 1.0), tries: int = 30,
                 base_scale: float = 1.0, positions_per_rotation: int = 4):
    """Place rotated real nucleus patches without overlap.

    Each attempt draws a centre uniform in the image, a patch, a uniform rotation and a scale
    factor uniform in ``scale`` (times ``base_scale``); the rotated patch is then tried at
    that centre and up to ``positions_per_rotation - 1`` further uniform centres.  A position
    is accepted when its centre pixel lies in ``region`` and outside every earlier nucleus
    dilated by ``min_gap``, and no nucleus pixel lies outside ``region`` or within
    ``min_gap`` pixels of an earlier nucleus.  Nuclei may be cut by the image border.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple (H, W)
    patches : sequence of ndarray uint8 (h, w, 4)
        Premultiplied RGBA nucleus patches (reference bundle).
    count : int
        Wanted number of nuclei; at most ``count * tries`` attempts are made.
    region : ndarray of bool (H, W), optional
    min_gap : float
    scale : (float, float)
    tries : int
    base_scale : float
        Pixel-size factor applied to every patch (bundle mpp / script mpp).

    Returns
    -------
    labels : ndarray of int32 (H, W)
        Nucleus ids ``1..m``.
    rgb : ndarray of float32 (H, W, 3)
        Nucleus colours (0 outside nuclei).
    centres : ndarray of float64 (m, 2)
    """
    H, W = (int(v) for v in shape)
    reg = np.ones((H, W), bool) if region is None else np.asarray(region, bool)
    if reg.shape != (H, W):
        raise ValueError(f"region has shape {reg.shape}, expected {(H, W)}")
    if len(patches) == 0 and count > 0:
        raise ValueError("no nucleus patches to place")
    labels = np.zeros((H, W), np.int32)
    rgb = np.zeros((H, W, 3), np.float32)
    forbidden = ~reg  # nucleus pixels may not go here (grows with every nucleus + gap)
    centres = []
    attempts = 0
    while len(centres) < count and attempts < count * tries:
        attempts += 1
        cy, cx = float(rng.uniform(0, H)), float(rng.uniform(0, W))
        iy, ix = min(int(cy), H - 1), min(int(cx), W - 1)
        if not reg[iy, ix] or forbidden[iy, ix]:
            continue
        k = int(rng.integers(len(patches)))
        src = patches[k]
        sc = base_scale * float(rng.uniform(scale[0], scale[1]))
        rot = _rotation(src.shape[0], src.shape[1], float(rng.uniform(0.0, 360.0)), sc)
        al_f, box = _rotated_alpha(src, rot)
        if box is None:
            continue
        al = al_f[box] >= 0.5
        h, w = al.shape
        for j in range(positions_per_rotation):
            if j > 0:
                cy, cx = float(rng.uniform(0, H)), float(rng.uniform(0, W))
                iy, ix = min(int(cy), H - 1), min(int(cx), W - 1)
                if not reg[iy, ix] or forbidden[iy, ix]:
                    continue
            r0, c0 = int(round(cy - h / 2.0)), int(round(cx - w / 2.0))
            y0, x0 = max(r0, 0), max(c0, 0)
            y1, x1 = min(r0 + h, H), min(c0 + w, W)
            if y0 >= y1 or x0 >= x1:
                continue
            sub = al[y0 - r0:y1 - r0, x0 - c0:x1 - c0]
            if np.any(forbidden[y0:y1, x0:x1] & sub):
                continue
            nid = len(centres) + 1
            win = labels[y0:y1, x0:x1]
            win[sub] = nid
            col = _rotated_rgb(src, rot, al_f, box)
            rgb[y0:y1, x0:x1][sub] = col[y0 - r0:y1 - r0, x0 - c0:x1 - c0][sub]
            # Forbid the nucleus dilated by the gap (computed on the full, unclipped patch).
            g = int(np.ceil(min_gap))
            dil = _dilate(al, min_gap) if min_gap > 0 else al
            fy0, fx0 = r0 - g, c0 - g
            a0, b0 = max(fy0, 0), max(fx0, 0)
            a1, b1 = min(fy0 + dil.shape[0], H), min(fx0 + dil.shape[1], W)
            if a0 < a1 and b0 < b1:
                forbidden[a0:a1, b0:b1] |= dil[a0 - fy0:a1 - fy0, b0 - fx0:b1 - fx0]
            centres.append((cy, cx))
            break
    return labels, rgb, np.asarray(centres, np.float64).reshape(-1, 2)


def _ellipse_box(cy, cx, a, b, th, H, W):
    c, s = np.cos(th), np.sin(th)
    ry = np.sqrt((a * s) ** 2 + (b * c) ** 2)
    rx = np.sqrt((a * c) ** 2 + (b * s) ** 2)
    y0, y1 = max(int(np.floor(cy - ry)), 0), min(int(np.ceil(cy + ry)) + 1, H)
    x0, x1 = max(int(np.floor(cx - rx)), 0), min(int(np.ceil(cx + rx)) + 1, W)
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float64)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float64)[None, :] - cx
    u = xx * c + yy * s
    v = -xx * s + yy * c
    return y0, x0, (u / a) ** 2 + (v / b) ** 2 <= 1.0


def place_immune_cells(rng: np.random.Generator, shape, spec: ImmuneSpec, count: int | None = None):
    """Random (partly clustered) ellipses with bounded overlap.

    A candidate is accepted when at most ``spec.max_overlap`` of its pixels are already
    covered by accepted cells; it is painted over them (moderate overlap).  Ellipse pixels
    follow the pixel-centre rule of :mod:`synth.layers`.

    Returns
    -------
    labels : ndarray of int32 (H, W)
        Cell ids ``1..m`` (a later cell overwrites an earlier one where they overlap).
    params : ndarray of float64 (m, 5)
        ``[cy, cx, a, b, theta]`` of each accepted cell.
    """
    H, W = (int(v) for v in shape)
    n = int(rng.integers(spec.count[0], spec.count[1] + 1)) if count is None else int(count)
    labels = np.zeros((H, W), np.int32)
    covered = np.zeros((H, W), bool)
    n_cl = int(rng.integers(spec.clusters[0], spec.clusters[1] + 1))
    cl = np.column_stack([rng.uniform(0, H, n_cl), rng.uniform(0, W, n_cl)])
    params = []
    attempts = 0
    while len(params) < n and attempts < max(n, 1) * spec.tries:
        attempts += 1
        if rng.random() < spec.cluster_fraction:
            cy, cx = cl[int(rng.integers(n_cl))] + spec.cluster_sigma * rng.standard_normal(2)
        else:
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        a = float(rng.uniform(*spec.semi_axis))
        b = a * float(rng.uniform(*spec.axis_ratio))
        th = float(rng.uniform(0.0, np.pi))
        if not (0 <= cy < H and 0 <= cx < W):
            continue
        box = _ellipse_box(cy, cx, a, b, th, H, W)
        if box is None:
            continue
        y0, x0, m = box
        area = m.sum()
        if area == 0:
            continue
        win = covered[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        if np.count_nonzero(win & m) > spec.max_overlap * area:
            continue
        win |= m
        labels[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = len(params) + 1
        params.append((cy, cx, a, b, th))
    return labels, np.asarray(params, np.float64).reshape(-1, 5)


def visible_mask(layers, target: str) -> np.ndarray:
    """Footprint of layer ``target`` minus the footprints of all layers above it.

    Parameters
    ----------
    layers : sequence of Layer, bottom to top
    target : str
        Layer name.

    Returns
    -------
    ndarray of float32 (H, W) in {0, 1}
    """
    names = [l.name for l in layers]
    if target not in names:
        raise ValueError(f"no layer named {target!r} (layers: {', '.join(names)})")
    i = names.index(target)
    m = layers[i].footprint.copy()
    for l in layers[i + 1:]:
        m &= ~l.footprint
    return m.astype(np.float32)


def speed_field(rng: np.random.Generator, shape, spec: SpeedSpec) -> np.ndarray:
    """Random velocity field of :class:`SpeedSpec` (values >= ``spec.minimum``).

    Like :func:`synth.fmm.random_speed_field`, but a field with a long correlation length is
    drawn on a grid ``f = corr // 4`` times coarser (correlation 4 coarse pixels) and
    interpolated bilinearly: the same smooth field at a fraction of the filtering cost.

    Returns
    -------
    ndarray of float64 (H, W)
    """
    H, W = (int(v) for v in shape)
    f = int(spec.corr // 4)
    if f < 2:
        return random_speed_field(rng, (H, W), spec.mean, spec.std, spec.corr, spec.minimum)
    hc, wc = -(-H // f) + 1, -(-W // f) + 1
    z = gaussian_random_field(rng, (hc, wc), spec.corr / f, dtype=np.float64)
    z = ndi.zoom(z, (H / hc, W / wc), order=1, grid_mode=True, mode="nearest")[:H, :W]
    return np.maximum(spec.mean + spec.std * z, spec.minimum)


def _ribbons(rng, vessel: np.ndarray, spec: ConnectiveSpec) -> np.ndarray:
    out = np.zeros(vessel.shape, bool)
    if spec.fields == 0 or not vessel.any() or vessel.all():
        return out
    src = ~vessel & ndi.binary_dilation(vessel)
    rows = np.flatnonzero((vessel | src).any(axis=1))
    cols = np.flatnonzero((vessel | src).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    for _ in range(spec.fields):
        t0 = float(rng.uniform(*spec.start))
        t1 = t0 + float(rng.uniform(*spec.width))
        sp = speed_field(rng, vessel.shape, spec.speed)
        # Fronts start on the tumour pixels next to the vessel region (the travel time from
        # the whole complement is the same) and only the vessel's bounding box matters.
        T = np.full(vessel.shape, np.inf)
        T[box] = travel_time(src[box], sp[box], max_time=t1)
        out |= vessel & (T >= t0) & (T < t1)
    return out


def vessel_regions(rng: np.random.Generator, shape, spec: RegionsSpec) -> np.ndarray:
    """Union of ``spec.vessel`` of ``spec.count`` fast-marching regions (bool (H, W)).

    Seeds are uniform; the velocity field follows ``spec.speed``.  The decomposition is
    computed on a grid twice as coarse (the regions are large and smooth) and the vessel
    indicator is interpolated bilinearly and thresholded at 1/2, which keeps its border smooth.
    """
    H, W = (int(v) for v in shape)
    if spec.vessel == 0:
        return np.zeros((H, W), bool)
    h2, w2 = -(-H // 2), -(-W // 2)
    seeds = np.column_stack([rng.integers(0, h2, spec.count), rng.integers(0, w2, spec.count)])
    half = dataclasses.replace(spec.speed, corr=spec.speed.corr / 2.0)
    regions = fmm_regions(seeds, speed_field(rng, (h2, w2), half))
    ind = (regions < spec.vessel).astype(np.float32)
    up = ndi.zoom(ind, (H / h2, W / w2), order=1, grid_mode=True, mode="nearest")[:H, :W]
    return up >= 0.5


# --------------------------------------------------------------------------- reference


def resolve_reference(script: Script, override=None) -> Path:
    """Path of the reference bundle for ``script``.

    ``override`` (e.g. ``--reference``) wins; otherwise ``[reference].path``: absolute, or
    relative to the script's folder if the file exists there, else relative to the current
    working directory.
    """
    if override is not None:
        return Path(override)
    p = Path(script["reference"].path if script["reference"] is not None else "reference.h5")
    if p.is_absolute():
        return p
    if script.path is not None:
        beside = Path(script.path).resolve().parent / p
        if beside.is_file():
            return beside
    return Path(os.getcwd()) / p


@dataclass(frozen=True)
class PreparedReference:
    """A bundle with patches converted and rescaled for one script's pixel size."""

    bundle: ReferenceBundle
    nuclei: tuple
    tumour: tuple  # per cohort, float32 (n_k, P', P', 3)
    immune: tuple
    base_scale: float
    fingerprint: str = ""


_CACHE: dict = {}


def _rescale_textures(ts, n_cohorts, s):
    out = []
    for k in range(n_cohorts):
        p = ts.cohort_patches(k).astype(np.float32) / 255.0
        if p.shape[0] == 0:
            raise ValueError(f"reference bundle has an empty cohort {k}")
        if abs(s - 1.0) > 1e-3:
            P = p.shape[1]
            P2 = max(2, int(round(P * s)))
            p = ndi.zoom(p, (1, P2 / P, P2 / P, 1), order=1, grid_mode=True, mode="nearest")
        out.append(np.clip(p, 0, 1).astype(np.float32))
    return tuple(out)


def prepare_reference(bundle: ReferenceBundle, mpp: float) -> PreparedReference:
    """Split texture patches into cohorts and rescale them from ``bundle.mpp`` to ``mpp``.

    Nucleus patches are rescaled when they are placed (``base_scale``).  A bundle with
    unknown pixel size (NaN) is taken to be at the script's scale.
    """
    s = 1.0 if not np.isfinite(bundle.mpp) else float(bundle.mpp) / float(mpp)
    return PreparedReference(
        bundle=bundle, nuclei=bundle.nuclei,
        tumour=_rescale_textures(bundle.textures["tumour"], bundle.n_cohorts, s),
        immune=_rescale_textures(bundle.textures["immune"], bundle.n_cohorts, s),
        base_scale=s, fingerprint=bundle.fingerprint())


def _get_reference(script: Script, reference) -> PreparedReference:
    if isinstance(reference, PreparedReference):
        return reference
    if isinstance(reference, ReferenceBundle):
        key = ("obj", id(reference), script.mpp)
        hit = _CACHE.get(key)
        # The entry keeps the bundle alive, so its id cannot be reused while cached.
        if hit is None or hit.bundle is not reference:
            _CACHE.clear()
            hit = _CACHE[key] = prepare_reference(reference, script.mpp)
        return hit
    path = resolve_reference(script, reference)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: scenario-3 reference bundle not found (script {script.path or script.name} "
            f"names {script['reference'].path if script['reference'] else 'reference.h5'!r}); "
            f"build one with 'python -m synth reference IMAGES -o {path.name} --mpp MPP' or "
            f"pass --reference FILE") from None
    key = ("path", str(path.resolve()), st.st_mtime_ns, st.st_size, script.mpp)
    if key not in _CACHE:
        _CACHE.clear()  # one bundle at a time is enough; avoid holding stale ones
        _CACHE[key] = prepare_reference(load_reference(path), script.mpp)
    return _CACHE[key]


def _colour(script: Script, ref: PreparedReference, name: str, bundle_name: str) -> ColorSpec:
    spec = getattr(script["colors"], name)
    rs = script["reference"]
    if rs is not None and bundle_name in rs.colors:
        cs = ref.bundle.colours.get(bundle_name)
        if cs is not None and cs.valid:
            return ColorSpec(mean=tuple(float(v) for v in np.clip(cs.mean, 0, 1)),
                             cov=tuple(tuple(float(v) for v in r) for r in cs.cov),
                             cov_between=spec.cov_between, corr=spec.corr,
                             source=f"reference bundle: {cs.rule}")
    return spec


# --------------------------------------------------------------------------- generator


def _noise_layer(rng, name, mask, spec: ColorSpec, filters) -> Layer:
    H, W = mask.shape
    col = sample_object_colors(rng, spec, 1)[0].astype(np.float32)
    m = mask.astype(np.float32)[..., None]
    rgba = np.concatenate([col * m, m], axis=-1)
    noise = np.zeros((H, W, 3), np.float32)
    if mask.any():
        # Noise is only drawn over the layer's bounding box (vessels cover a small part).
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        noise[box] = color_noise(rng, mask[box].shape, spec) * m[box]
    layer = Layer(name=name, category=name, rgba=rgba, noise=noise, filters=tuple(filters))
    return _bake(layer, filters, rng)


def _bake(layer: Layer, filters, rng) -> Layer:
    both = [f for f in filters if f.apply_to == "both"]
    if both:
        layer.rgba = np.ascontiguousarray(apply_filters(layer.rgba, both, rng), np.float32)
    return layer


def generate(script: Script, rng: np.random.Generator, reference=None) -> Sample:
    """One scenario-3 sample (the ``generate`` of the registered kind ``scenario3``).

    Parameters
    ----------
    script : Script
        A parsed scenario-3 script.
    rng : numpy.random.Generator
        The only source of randomness.
    reference : None, path-like, ReferenceBundle or PreparedReference
        Overrides the script's ``[reference].path``.

    Returns
    -------
    Sample
        Layers :data:`LAYER_NAMES`, noisy / clean (3, H, W) float32 and the mask of visible
        tumour-nucleus pixels.
    """
    ref = _get_reference(script, reference)
    H, W = script.size
    filters = script["filters"] or {}
    regs = script["regions"] or RegionsSpec()
    conn = script["connective"] or ConnectiveSpec()
    nsp = script["tumour_nuclei"] or NucleiSpec()
    csp = script["tumour_cells"] or TumourCellSpec()
    isp = script["immune_cells"] or ImmuneSpec()
    render = script["render"] or RenderSpec()
    target = (script["mask"] or MaskSpec()).target

    # Regions: fast-marching decomposition; the first `vessel` labels hold vessels (seeds
    # are i.i.d., so which labels is immaterial).
    vessel = vessel_regions(rng, (H, W), regs)
    tumour_area = ~vessel

    layers = [_noise_layer(rng, "background", np.ones((H, W), bool),
                           _colour(script, ref, "background", "background"),
                           filters.get("background", ())),
              _noise_layer(rng, "vessels", vessel, _colour(script, ref, "vessel", "vessel"),
                           filters.get("vessels", ())),
              _noise_layer(rng, "connective", _ribbons(rng, vessel, conn),
                           _colour(script, ref, "stroma", "stroma"),
                           filters.get("connective", ()))]

    n_nuc = int(rng.integers(nsp.count[0], nsp.count[1] + 1))
    nuc_lab, nuc_rgb, nuc_ctr = place_nuclei(rng, (H, W), ref.nuclei, n_nuc, region=tumour_area,
                                             min_gap=nsp.min_gap, scale=nsp.scale,
                                             tries=nsp.tries, base_scale=ref.base_scale)
    n = nuc_ctr.shape[0]

    cell_speed = speed_field(rng, (H, W), csp.speed)
    cells = grow_cells(nuc_lab, cell_speed, csp.growth_time, allowed=tumour_area)
    n_coh = len(ref.tumour)
    cell_cohort = rng.integers(0, n_coh, size=n)
    cell_rgb = texture_cells(rng, cells, cell_cohort, ref.tumour, csp.patch_overlap)
    contour = region_boundaries(cells) & (cells > 0)
    ccol = np.asarray(script["colors"].contour.mean, np.float32)
    op = np.float32(csp.contour_opacity)
    cell_rgb[contour] = (1 - op) * cell_rgb[contour] + op * ccol
    rgba = np.concatenate([cell_rgb, (cells > 0)[..., None].astype(np.float32)], axis=-1)
    layers.append(_bake(Layer("tumour_cells", "tumour_cell", rgba, labels=cells,
                              filters=tuple(filters.get("tumour_cells", ()))),
                        filters.get("tumour_cells", ()), rng))

    rgba = np.concatenate([nuc_rgb, (nuc_lab > 0)[..., None].astype(np.float32)], axis=-1)
    layers.append(_bake(Layer("tumour_nuclei", "tumour_nucleus", rgba, labels=nuc_lab,
                              centers=nuc_ctr,
                              filters=tuple(filters.get("tumour_nuclei", ()))),
                        filters.get("tumour_nuclei", ()), rng))

    imm_lab, imm_par = place_immune_cells(rng, (H, W), isp)
    m = imm_par.shape[0]
    imm_rgb = texture_cells(rng, imm_lab, rng.integers(0, n_coh, size=m), ref.immune,
                            isp.patch_overlap)
    rgba = np.concatenate([imm_rgb, (imm_lab > 0)[..., None].astype(np.float32)], axis=-1)
    layers.append(_bake(Layer("immune_cells", "immune_cell", rgba, labels=imm_lab,
                              centers=imm_par[:, :2].copy(), axes=imm_par[:, 2:].copy(),
                              filters=tuple(filters.get("immune_cells", ()))),
                        filters.get("immune_cells", ()), rng))

    mask = visible_mask(layers, target)
    noisy, clean = compose(layers, rng, render)
    info = {"tumour_nuclei": n, "wanted_tumour_nuclei": n_nuc, "immune_cells": m,
            "vessel_fraction": float(vessel.mean()), "reference": ref.fingerprint}
    return Sample(layers=layers, noisy=noisy, clean=clean, mask=mask, info=info)


def _load_for_kind(path) -> ReferenceBundle:
    """``load_reference`` hook of the registered kind (``synth generate --reference``)."""
    return load_reference(path)


register_scenario(
    "scenario3", sections=_SECTIONS, generate=generate, required=("colors",), replace=True,
    load_reference=_load_for_kind,
    doc="H&E melanoma: real tumour-nucleus patches, fast-marching tumour cells, patch-textured "
        "immune cells; mask = visible tumour nuclei (needs a reference bundle)")
