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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from . import tme
from .color import ColorSpec, color_noise, sample_object_colors
from .degrade import DegradeSpec, canvas_size, degrade_input, rescale, stain_variation
from .fmm import fmm_labels, fmm_regions, random_speed_field, region_boundaries, travel_time
from .generator import RenderSpec, Sample, compose
from .kinds import register_scenario
from .layers import FilterSpec, Layer, apply_filters
from .noise import gaussian_random_field
from .params import ParseContext, param
from .reference import ReferenceBundle, load_reference

if TYPE_CHECKING:  # annotations only: synth.script imports this module
    from .script import Script
from .tme import (
    _rotated_alpha,
    _rotated_rgb,
    _rotation,
    density_jitter,
    ellipse_box,  # noqa: F401 (the pixel rule of place_immune_cells' ellipses)
    rotate_patch,
)

__all__ = [
    "LAYER_NAMES", "SpeedSpec", "ReferenceSpec", "RegionsSpec", "ConnectiveSpec", "NucleiSpec",
    "TumourCellSpec", "ImmuneSpec", "AggregateSpec", "InfiltrateSpec", "Scenario3Colors",
    "MaskSpec", "CLASS_LAYERS", "FINE_OF_CLASS", "class_masks", "sample_layout",
    "rotate_patch", "lattice_texture", "texture_cells", "grow_cells", "place_nuclei",
    "place_immune_cells", "visible_mask", "speed_field", "vessel_regions", "resolve_reference",
    "PreparedReference", "prepare_reference", "generate",
]

#: Layer names, bottom to top (the article's order, with the look-alike layers of
#: :mod:`synth.tme` inserted; a layer whose section is absent or off is left out).
LAYER_NAMES = ("background", "vessels", "connective", "vessel_cells", "stroma", "tumour_cells",
               "tumour_nuclei", "infiltrate", "aggregates", "immune_cells", "pigment", "debris")


# --------------------------------------------------------------------------- script schema


def _ranges(spec, names):
    """``check`` items for (low, high) fields whose low exceeds their high."""
    for k in names:
        lo, hi = getattr(spec, k)
        if lo > hi:
            yield (k, f"range must be [low, high] with low <= high, got {[lo, hi]}")


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
        yield from _ranges(self, ("start", "width"))


@dataclass(frozen=True)
class NucleiSpec:
    """``[tumour_nuclei]``: real nucleus patches, random rotation and scale, no overlap."""

    count: tuple[int, int] = param((14, 26), ge=0, le=10000)
    min_gap: float = param(6.0, ge=0.0, le=100.0, doc="pixels between two nuclei at least")
    scale: tuple[float, float] = param((0.9, 1.1), gt=0.0, le=10.0)
    tries: int = param(30, ge=1, le=10000, doc="placement attempts per wanted nucleus")
    flip: bool = param(False, doc="mirror half of the patches (more variety from few nuclei)")
    density: tuple[float, float] = param((1.0, 1.0), gt=0.0, le=5.0,
                                         doc="stain density factor range per nucleus")
    small_fraction: float = param(0.0, ge=0.0, le=1.0,
                                  doc="share of nuclei drawn small and pale (0 = none)")
    small_area: tuple[float, float] = param((40.0, 75.0), gt=0.0, le=1e6,
                                            doc="area (px²) of a small nucleus, uniform")
    small_density: tuple[float, float] = param((0.65, 0.85), gt=0.0, le=1.0,
                                               doc="extra stain density factor (paler)")

    def check(self):
        yield from _ranges(self, ("count", "scale", "density", "small_area", "small_density"))


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
    real_fraction: float = param(0.0, ge=0.0, le=1.0,
                                 doc="fraction drawn as real immune-nucleus patches")
    scale: tuple[float, float] = param((0.9, 1.1), gt=0.0, le=10.0)
    density: tuple[float, float] = param((1.0, 1.0), gt=0.0, le=5.0)

    def check(self):
        yield from _ranges(self, ("count", "semi_axis", "axis_ratio", "clusters", "scale",
                                  "density"))


@dataclass(frozen=True)
class AggregateSpec:
    """``[aggregates]``: dense lymphocyte aggregates (look-alikes, never in the mask).

    With probability ``probability`` an image gets ``count`` aggregates.  Each is a region
    grown by fast marching from a uniform seed up to travel time ``radius`` over the velocity
    field ``speed`` (:func:`synth.tme.grow_region`), filled with the ``[colors.aggregate]``
    matrix and packed with real immune-nucleus patches at uniform centres until they cover
    ``packing`` of it (counted at the mean patch area times the mean of ``scale²``), each
    overlapping earlier ones by at most ``max_overlap`` and centred at least ``min_distance``
    px from the others (:func:`synth.tme.paste_patches`).  Tumour nuclei are not centred
    inside an aggregate (``exclude_tumour``).
    """

    probability: float = param(0.0, ge=0.0, le=1.0)
    count: tuple[int, int] = param((1, 2), ge=0, le=100)
    radius: tuple[float, float] = param((20.0, 60.0), gt=0.0, le=5000.0)
    speed: SpeedSpec = field(default_factory=lambda: SpeedSpec(corr=15.0, std=0.4))
    packing: tuple[float, float] = param((0.45, 0.7), ge=0.0, le=1.0)
    max_overlap: float = param(0.25, ge=0.0, le=1.0)
    scale: tuple[float, float] = param((0.85, 1.15), gt=0.0, le=10.0)
    density: tuple[float, float] = param((1.0, 1.0), gt=0.0, le=5.0)
    tries: int = param(8, ge=1, le=1000, doc="candidate centres per wanted nucleus")
    min_distance: float = param(0.0, ge=0.0, le=1000.0,
                                doc="smallest centre distance (px) of two aggregate nuclei")
    exclude_tumour: bool = True
    abut: float = param(0.0, ge=0.0, le=1.0,
                        doc="probability that an aggregate gets a border band into the tumour")
    band: tuple[float, float] = param((6.0, 14.0), gt=0.0, le=1000.0,
                                      doc="width (px) of the band outside the aggregate")
    band_packing: tuple[float, float] = param((0.3, 0.6), ge=0.0, le=1.0,
                                              doc="share of the band's free pixels covered")
    band_max_tumour: float = param(0.15, ge=0.0, le=1.0,
                                   doc="share of a band nucleus that may cover tumour nuclei")
    margin: tuple[float, float] = param((0.0, 0.0), ge=0.0, le=1000.0,
                                        doc="tumour-free rim (px) of the aggregates that "
                                            "do not abut (only with abut > 0)")

    def check(self):
        yield from _ranges(self, ("count", "radius", "packing", "scale", "density", "band",
                                  "band_packing", "margin"))


@dataclass(frozen=True)
class InfiltrateSpec:
    """``[infiltrate]``: single lymphocytes and plasma cells among the tumour cells.

    An image with ``n`` tumour nuclei gets ``Poisson(r * n)`` infiltrating immune nuclei, ``r``
    uniform in ``per_tumour``.  Candidate centres are uniform over the tumour cells, off the
    tumour nuclei, and inside a tumour nest: at least ``nest_min_tumour`` tumour centres within
    ``nest_radius`` px (the definition of :mod:`synth.layouts`).  A candidate is accepted when
    at most ``max_tumour_overlap`` of it lies on tumour nuclei or within ``tumour_gap`` px of
    one (it lies between tumour nuclei, close to, touching or slightly over them) and at most
    ``max_overlap`` of it covers other infiltrating nuclei.  A share ``real_fraction`` are real
    immune-nucleus patches of the bundle no larger than ``max_area`` px² (0 = any), rotated,
    scaled by ``scale`` and stain-jittered by ``density``; the rest are ellipses
    (``semi_axis``, ``axis_ratio``) textured with immune patches, like the ``immune_cells``
    layer.  Layer ``infiltrate`` (above the tumour nuclei), target class ``immune``;
    ``per_tumour = [0, 0]`` leaves the layer out.
    """

    per_tumour: tuple[float, float] = param((0.0, 0.0), ge=0.0, le=100.0)
    nest_radius: float = param(31.0, gt=0.0, le=10000.0)
    nest_min_tumour: int = param(3, ge=0, le=1000)
    max_tumour_overlap: float = param(0.15, ge=0.0, le=1.0)
    tumour_gap: float = param(0.0, ge=0.0, le=100.0,
                              doc="px around tumour nuclei that count as covering them")
    max_overlap: float = param(0.1, ge=0.0, le=1.0)
    real_fraction: float = param(0.7, ge=0.0, le=1.0)
    max_area: float = param(0.0, ge=0.0, le=1e6)
    scale: tuple[float, float] = param((1.0, 1.0), gt=0.0, le=10.0)
    density: tuple[float, float] = param((1.0, 1.0), gt=0.0, le=5.0)
    semi_axis: tuple[float, float] = param((4.5, 6.5), gt=0.0, le=1000.0)
    axis_ratio: tuple[float, float] = param((0.7, 0.95), gt=0.0, le=1.0)
    patch_overlap: int = param(1, ge=0, le=100)
    tries: int = param(30, ge=1, le=10000, doc="candidate centres per wanted nucleus")

    def check(self):
        yield from _ranges(self, ("per_tumour", "scale", "density", "semi_axis", "axis_ratio"))


@dataclass(frozen=True)
class StromaSpec:
    """``[stroma]``: fibrous stroma with fibroblast nuclei (look-alikes, never in the mask).

    ``regions`` (a range) of the region decomposition's regions after the vessel ones become
    stroma: ``[colors.stroma]`` noise, no tumour cells.  Fibroblasts: ``density`` nuclei per
    10 000 px of stroma; a fraction ``real_fraction`` are real "other" nucleus patches (spindle,
    endothelial), the rest dark ellipses of long semi-axis ``semi_axis`` and ratio
    ``axis_ratio`` textured with immune patches, their long axes following a smooth random
    direction field of correlation ``corr`` px (collagen bundles run parallel).
    """

    regions: tuple[int, int] = param((0, 0), ge=0, le=100)
    density: tuple[float, float] = param((2.0, 6.0), ge=0.0, le=1000.0)
    semi_axis: tuple[float, float] = param((12.0, 20.0), gt=0.0, le=1000.0)
    axis_ratio: tuple[float, float] = param((0.2, 0.4), gt=0.0, le=1.0)
    corr: float = param(30.0, gt=0.0, le=1000.0)
    real_fraction: float = param(0.5, ge=0.0, le=1.0)
    scale: tuple[float, float] = param((0.9, 1.1), gt=0.0, le=10.0)

    def check(self):
        yield from _ranges(self, ("regions", "density", "semi_axis", "axis_ratio", "scale"))


@dataclass(frozen=True)
class VesselCellSpec:
    """``[vessel_cells]``: red blood cells filling ``fill`` of the vessel lumen (ellipses of
    radius ``red_cell_radius``) and endothelial nuclei every ``endothelial_spacing`` px along
    the vessel wall, long axis along it (0 = none)."""

    fill: tuple[float, float] = param((0.0, 0.0), ge=0.0, le=1.0)
    red_cell_radius: tuple[float, float] = param((12.0, 16.0), gt=0.0, le=1000.0)
    endothelial_spacing: float = param(0.0, ge=0.0, le=10000.0)
    endothelial_semi_axis: tuple[float, float] = param((10.0, 16.0), gt=0.0, le=1000.0)
    endothelial_axis_ratio: tuple[float, float] = param((0.25, 0.4), gt=0.0, le=1.0)

    def check(self):
        yield from _ranges(self, ("fill", "red_cell_radius", "endothelial_semi_axis",
                                  "endothelial_axis_ratio"))


@dataclass(frozen=True)
class GranuleSpec:
    """``[pigment]`` (melanin, melanophages) and ``[debris]`` (apoptotic / necrotic fragments):
    with probability ``probability``, ``count`` granular blobs of radius ``radius`` whose
    pixels are set with density ``density`` at grain ``grain`` px (:func:`synth.tme.granules`),
    at uniform positions or, with ``near_immune``, next to immune nuclei."""

    probability: float = param(0.0, ge=0.0, le=1.0)
    count: tuple[int, int] = param((1, 5), ge=0, le=10000)
    radius: tuple[float, float] = param((8.0, 25.0), gt=0.0, le=1000.0)
    density: tuple[float, float] = param((0.3, 0.7), gt=0.0, le=1.0)
    grain: float = param(1.0, ge=0.0, le=50.0)

    def check(self):
        yield from _ranges(self, ("count", "radius", "density"))


def _default_colour(mean, sd=0.03, corr=1.0, source="chosen by eye"):
    c = tuple(tuple((sd * sd if i == j else 0.5 * sd * sd) for j in range(3)) for i in range(3))
    return field(default_factory=lambda: ColorSpec(mean=mean, cov=c, cov_between=c, corr=corr,
                                                   source=source))


@dataclass(frozen=True)
class Scenario3Colors:
    """``[colors]``: noise-layer colours (:class:`synth.color.ColorSpec`) and the contour colour
    of tumour cells (only its ``mean`` is used).  The look-alike colours have defaults."""

    background: ColorSpec
    vessel: ColorSpec
    stroma: ColorSpec
    contour: ColorSpec
    aggregate: ColorSpec = _default_colour((0.50, 0.30, 0.62))
    red_cells: ColorSpec = _default_colour((0.86, 0.36, 0.40))
    fibroblast: ColorSpec = _default_colour((0.30, 0.12, 0.45))
    pigment: ColorSpec = _default_colour((0.42, 0.30, 0.22), sd=0.05)
    debris: ColorSpec = _default_colour((0.25, 0.08, 0.38), sd=0.05)


#: Which layers' nuclei make up each nucleus class of a per-class target (``[mask].classes``):
#: the scenario's facts.  Tumour nuclei; lymphocytes and plasma cells, scattered or in
#: aggregates; every other nucleus the generator draws (fibroblasts, endothelial cells).
CLASS_LAYERS = {
    "tumour": ("tumour_nuclei",),
    "immune": ("infiltrate", "immune_cells", "aggregates"),
    "other": ("stroma", "vessel_cells"),
}


@dataclass(frozen=True)
class MaskSpec:
    """``[mask]``: the target mask is the visible part of ``target``'s objects, i.e. its
    footprint minus the footprints of all layers above it.

    With ``classes`` (e.g. ``["tumour", "immune", "other"]``) the target has one channel per
    class instead: the visible nucleus pixels of the layers :data:`CLASS_LAYERS` lists for
    it (``target`` is then unused)."""

    target: Literal["tumour_nuclei"] = "tumour_nuclei"
    classes: tuple[Literal["tumour", "immune", "other"], ...] = ()

    def check(self):
        if len(set(self.classes)) != len(self.classes):
            yield ("classes", f"must be distinct, got {list(self.classes)}")


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
    "aggregates": AggregateSpec,
    "infiltrate": InfiltrateSpec,
    "stroma": StromaSpec,
    "vessel_cells": VesselCellSpec,
    "pigment": GranuleSpec,
    "debris": GranuleSpec,
    "degrade": DegradeSpec,
    "colors": Scenario3Colors,
    "filters": _parse_filters,
    "render": RenderSpec,
    "mask": MaskSpec,
}


# --------------------------------------------------------------------------- geometry


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
                 base_scale: float = 1.0, positions_per_rotation: int = 4,
                 flip: bool = False, density=(1.0, 1.0), small_fraction: float = 0.0,
                 small_area=(1.0, 1.0), small_density=(1.0, 1.0), small_ids=None):
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
    flip : bool
        Mirror each drawn patch with probability 1/2 (drawn only when True, so that scripts
        without it keep their samples).
    density : (float, float)
        Stain density factor range (:func:`synth.tme.density_jitter`); drawn only when the
        range is not (1, 1).
    small_fraction, small_area, small_density
        With probability ``small_fraction`` an attempt draws a *small, pale* nucleus: the
        patch is scaled to an area (px², output pixels) uniform in ``small_area`` instead of
        by ``scale``, and its stain density is multiplied by a factor uniform in
        ``small_density`` (drawn only when ``small_fraction > 0``, so that scripts without it
        keep their samples).
    small_ids : list, optional
        Receives the ids of the small nuclei.

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
        if flip and rng.integers(2):
            src = src[:, ::-1]
        dens = float(rng.uniform(*density)) if tuple(density) != (1.0, 1.0) else 1.0
        sc = base_scale * float(rng.uniform(scale[0], scale[1]))
        small = small_fraction > 0 and rng.random() < small_fraction
        if small:
            a_src = max(int(np.count_nonzero(src[..., 3] >= 128)), 1)
            sc = float(np.sqrt(float(rng.uniform(*small_area)) / a_src))
            dens *= float(rng.uniform(*small_density))
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
            if dens != 1.0:
                col = density_jitter(col, dens)
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
            if small and small_ids is not None:
                small_ids.append(nid)
            break
    return labels, rgb, np.asarray(centres, np.float64).reshape(-1, 2)


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
        fit = tme.fit_ellipse(rng, cy, cx, spec.semi_axis, spec.axis_ratio, labels, spec.max_overlap)
        if fit is None:
            continue
        sl, m, p = fit
        labels[sl][m] = len(params) + 1
        params.append(p)
    return labels, np.asarray(params, np.float64).reshape(-1, 5)


def nucleus_pixels(layer) -> np.ndarray:
    """Pixels of ``layer``'s nuclei: its labelled objects from id ``info["nucleus_min_id"]``
    on (default 1; lower ids are objects that are no nuclei, e.g. red cells), or nothing for
    a layer without labels."""
    if layer.labels is None:
        return np.zeros(layer.rgba.shape[:2], bool)
    return layer.labels >= int(layer.info.get("nucleus_min_id", 1))


def class_masks(layers, classes) -> np.ndarray:
    """Per-class target: the visible nucleus pixels of each class's layers.

    Parameters
    ----------
    layers : sequence of Layer, bottom to top
    classes : sequence of str
        Keys of :data:`CLASS_LAYERS`.

    Returns
    -------
    ndarray of float32 (len(classes), H, W) in {0, 1}
        Channel ``c``: pixels of a nucleus (:func:`nucleus_pixels`) of one of ``classes[c]``'s
        layers that no layer above covers.  The channels are disjoint.
    """
    names = [l.name for l in layers]
    H, W = layers[0].rgba.shape[:2]
    out = np.zeros((len(classes), H, W), np.float32)
    # covered[i]: footprint of every layer above layer i
    covered = np.zeros((H, W), bool)
    above = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        above[i] = covered.copy()
        covered |= layers[i].footprint
    for c, cls in enumerate(classes):
        for lname in CLASS_LAYERS[cls]:
            if lname in names:
                i = names.index(lname)
                out[c][nucleus_pixels(layers[i]) & ~above[i]] = 1.0
    return out


#: Fine class (:data:`synth.layouts.FINE_CLASSES`) given to each class's nuclei by
#: :func:`sample_layout`: tumour, lymphocyte, stroma.
FINE_OF_CLASS = {"tumour": 1, "immune": 2, "other": 7}


def sample_layout(layers, name: str = "sample"):
    """The visible nuclei of a generated sample as a layout (instances + fine classes), the
    format of the real PUMA layouts, so that :mod:`synth.layouts` measures generated and real
    tissue with the same code.

    Layers are painted bottom to top: a layer's footprint hides what is below it, and the
    nuclei (:func:`nucleus_pixels`) of the layers in :data:`CLASS_LAYERS` get new ids of
    their class (:data:`FINE_OF_CLASS`).  A nucleus hidden completely keeps its id without
    pixels, as an overwritten polygon of the real layouts.

    Parameters
    ----------
    layers : sequence of Layer (or a Sample)
    name : str

    Returns
    -------
    synth.layouts.RoiLayout
    """
    from .layouts import RoiLayout

    layers = getattr(layers, "layers", layers)
    H, W = layers[0].rgba.shape[:2]
    cls_of = {ln: c for c, lns in CLASS_LAYERS.items() for ln in lns}
    inst = np.zeros((H, W), np.int32)
    fine = [0]
    for layer in layers:
        inst[layer.footprint] = 0
        c = cls_of.get(layer.name)
        if c is None or layer.labels is None:
            continue
        on = nucleus_pixels(layer)
        lab = layer.labels[on]
        ids = np.unique(lab)
        inst[on] = len(fine) + np.searchsorted(ids, lab)
        fine.extend([FINE_OF_CLASS[c]] * ids.size)
    return RoiLayout(name, inst, np.asarray(fine, np.int16))


def mask_classes(script: Script) -> tuple:
    """Class names of the script's mask channels (``()`` for the one-channel target)."""
    return tuple((script["mask"] or MaskSpec()).classes)


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
    return region_masks(rng, (H, W), spec, [(0, spec.vessel)])[0]


def region_masks(rng: np.random.Generator, shape, spec: RegionsSpec, bounds) -> list:
    """Unions of consecutive regions of one decomposition: for every ``(lo, hi)`` of
    ``bounds`` the pixels of regions ``lo <= label < hi`` (bool (H, W)); see
    :func:`vessel_regions`, which is ``region_masks(..., [(0, spec.vessel)])[0]``."""
    H, W = (int(v) for v in shape)
    h2, w2 = -(-H // 2), -(-W // 2)
    seeds = np.column_stack([rng.integers(0, h2, spec.count), rng.integers(0, w2, spec.count)])
    half = dataclasses.replace(spec.speed, corr=spec.speed.corr / 2.0)
    regions = fmm_regions(seeds, speed_field(rng, (h2, w2), half))
    out = []
    for lo, hi in bounds:
        if hi <= lo:
            out.append(np.zeros((H, W), bool))
            continue
        ind = ((regions >= lo) & (regions < hi)).astype(np.float32)
        up = ndi.zoom(ind, (H / h2, W / w2), order=1, grid_mode=True, mode="nearest")[:H, :W]
        out.append(up >= 0.5)
    return out


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
    immune_nuclei: tuple = ()  # look-alike nucleus patches (bundle version >= 2)
    other_nuclei: tuple = ()


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
        base_scale=s, fingerprint=bundle.fingerprint(),
        immune_nuclei=bundle.nucleus_sets["immune"].patches,
        other_nuclei=bundle.nucleus_sets["other"].patches)


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
        Layers (a subset of :data:`LAYER_NAMES`, bottom to top), noisy / clean (3, H, W)
        float32 and the mask of visible tumour-nucleus pixels.

    Notes
    -----
    With ``[degrade].scale`` the layers are drawn on a canvas of ``size / s`` pixels and the
    images, mask and layers are resampled by ``s`` afterwards (:mod:`synth.degrade`); stain
    variation then changes both images alike and blur, noise and JPEG only the input.
    """
    ref = _get_reference(script, reference)
    H, W = script.size
    deg = script["degrade"] or DegradeSpec()
    s_jit = 1.0
    if deg.active and tuple(deg.scale) != (1.0, 1.0):
        s_jit = float(rng.uniform(*deg.scale))
    Hc, Wc = canvas_size((H, W), s_jit) if s_jit != 1.0 else (H, W)
    layers, mask, info = _draw_layers(script, rng, ref, (Hc, Wc))
    render = script["render"] or RenderSpec()
    noisy, clean = compose(layers, rng, render)
    if deg.active:
        if s_jit != 1.0:
            noisy, clean = rescale(noisy, s_jit, (H, W)), rescale(clean, s_jit, (H, W))
            if mask.ndim == 2:
                mask = (rescale(mask, s_jit, (H, W)) >= 0.5).astype(np.float32)
            else:
                # each pixel to the class whose resampled map is largest there, so that the
                # class channels stay disjoint
                r = np.stack([rescale(c, s_jit, (H, W)) for c in mask])
                top = r.argmax(axis=0)
                mask = ((np.arange(len(r))[:, None, None] == top) & (r.max(axis=0) >= 0.5)).astype(np.float32)
            layers = _RescaledLayers(layers, s_jit, (H, W))
        stain = stain_variation(rng, deg)
        clean, noisy = stain(clean), stain(noisy)
        noisy = degrade_input(rng, noisy, deg)
        info["scale_jitter"] = s_jit
    return Sample(layers=layers, noisy=np.clip(noisy, 0, 1).astype(np.float32),
                  clean=np.clip(clean, 0, 1).astype(np.float32), mask=mask, info=info)


class _RescaledLayers(Sequence):
    """The layers resampled by ``s`` on first access (a read-only list).

    Only previews and tests look at the layers once the images are composed; resampling every
    layer of every sample up front took a quarter of the generation time (bench_scenario3).
    """

    def __init__(self, layers, s: float, size):
        self._src = list(layers)
        self._s, self._size = s, size
        self._done: dict[int, Layer] = {}

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        k = range(len(self._src))[i]
        if k not in self._done:
            self._done[k] = _rescale_layer(self._src[k], self._s, self._size)
        return self._done[k]

    def __repr__(self) -> str:
        return f"_RescaledLayers({[l.name for l in self._src]}, s={self._s:.3f})"


def _rescale_layer(layer: Layer, s: float, size) -> Layer:
    """The layer resampled like the images (for previews; its noise is already rendered)."""
    rgba = rescale(layer.rgba.transpose(2, 0, 1), s, size).transpose(1, 2, 0)
    labels = None if layer.labels is None else rescale(layer.labels, s, size, order=0)
    return Layer(layer.name, layer.category, np.ascontiguousarray(rgba, np.float32),
                 labels=labels, centers=None if layer.centers is None else layer.centers * s,
                 filters=layer.filters, info=layer.info)


def _centres_uniform(rng, region, n):
    """``n`` uniform centres (row, col) in the pixels of ``region``."""
    ys, xs = np.nonzero(region)
    if ys.size == 0 or n <= 0:
        return np.zeros((0, 2))
    k = rng.integers(0, ys.size, size=int(n))
    return np.column_stack([ys[k] + rng.uniform(size=k.size), xs[k] + rng.uniform(size=k.size)])


def _mean_square(scale) -> float:
    """Mean of ``s²`` for ``s`` uniform in ``scale = (a, b)``: a patch's mean area factor."""
    a, b = (float(v) for v in scale)
    return (a * a + a * b + b * b) / 3.0


def _mean_area(patches, base_scale) -> float:
    if not patches:
        return 1.0
    return float(np.mean([np.count_nonzero(p[..., 3] >= 128) for p in patches])) * base_scale ** 2


def _need(patches, what):
    if not patches:
        raise ValueError(f"the reference bundle has no {what}-nucleus patches (a version-1 "
                         f"bundle?): rebuild it with 'python -m synth reference'")
    return patches


def _aggregates(rng, shape, spec: AggregateSpec, ref: "PreparedReference"):
    """Regions and packed nuclei of the lymphocyte aggregates (see :class:`AggregateSpec`)."""
    H, W = shape
    region = np.zeros((H, W), bool)
    labels = np.zeros((H, W), np.int32)
    rgb = np.zeros((H, W, 3), np.float32)
    regions = []
    if not (rng.random() < spec.probability):
        return region, labels, rgb, 0, regions
    patches = _need(ref.immune_nuclei, "immune")
    area1 = _mean_area(patches, ref.base_scale) * _mean_square(spec.scale)
    n_done = 0
    for _ in range(int(rng.integers(spec.count[0], spec.count[1] + 1))):
        seed = (rng.uniform(0, H), rng.uniform(0, W))
        sp = speed_field(rng, (H, W), spec.speed)
        reg = tme.grow_region(rng, (H, W), seed, float(rng.uniform(*spec.radius)), sp)
        region |= reg
        regions.append(reg)
        want = int(round(float(rng.uniform(*spec.packing)) * reg.sum() / area1))
        cand = _centres_uniform(rng, reg, want * spec.tries)
        before = n_done
        labels, rgb, acc = tme.paste_patches(
            rng, (H, W), patches, cand, max_overlap=spec.max_overlap, scale=spec.scale,
            base_scale=ref.base_scale, density=spec.density, region=reg, labels=labels,
            rgb=rgb, id_offset=n_done, max_count=want, min_distance=spec.min_distance)
        n_done = before + acc.shape[0]
    return region, labels, rgb, n_done, regions


def _nest_filter(cand, tumour_centres, radius, k):
    """The candidates (m, 2) with at least ``k`` tumour centres within ``radius``."""
    if k <= 0 or cand.shape[0] == 0:
        return cand
    if tumour_centres.shape[0] < k:
        return cand[:0]
    cnt = cKDTree(tumour_centres).query_ball_point(cand, radius, return_length=True)
    return cand[np.asarray(cnt) >= k]


def _small_patches(ref: "PreparedReference", max_area: float):
    """Immune-nucleus patches whose area at the script's scale is at most ``max_area`` px²."""
    patches = _need(ref.immune_nuclei, "immune")
    if max_area <= 0:
        return patches
    key = ("small", id(ref), float(max_area))
    hit = _PATCH_CACHE.get(key)
    if hit is None or hit[0] is not ref:
        area = np.array([np.count_nonzero(p[..., 3] >= 128) for p in patches]) * ref.base_scale ** 2
        sel = tuple(p for p, a in zip(patches, area) if a <= max_area)
        if not sel:
            raise ValueError(f"no immune-nucleus patch of the bundle is as small as "
                             f"infiltrate.max_area = {max_area:g} px²")
        _PATCH_CACHE.clear()
        hit = _PATCH_CACHE[key] = (ref, sel)
    return hit[1]


_PATCH_CACHE: dict = {}


def _infiltrate(rng, shape, spec: InfiltrateSpec, ref: "PreparedReference", cells, nuc_lab,
                nuc_ctr):
    """Labels, colours and centres of the infiltrating immune nuclei (see
    :class:`InfiltrateSpec`)."""
    H, W = shape
    labels = np.zeros((H, W), np.int32)
    rgb = np.zeros((H, W, 3), np.float32)
    n_t = nuc_ctr.shape[0]
    want = int(rng.poisson(float(rng.uniform(*spec.per_tumour)) * n_t)) if n_t else 0
    if want == 0:
        return labels, rgb, np.zeros((0, 2))
    n_real = int(rng.binomial(want, spec.real_fraction)) if ref.immune_nuclei else 0
    tumour = nuc_lab > 0
    allowed = (cells > 0) & ~tumour
    # pixels "on" a tumour nucleus: the nucleus and a margin of tumour_gap px around it
    near = (ndi.distance_transform_edt(~tumour) <= spec.tumour_gap) if spec.tumour_gap > 0 \
        else tumour

    def candidates(m):
        c = _centres_uniform(rng, allowed, m * spec.tries)
        return _nest_filter(c, nuc_ctr, spec.nest_radius, spec.nest_min_tumour)

    centres = np.zeros((0, 2))
    if n_real:
        labels, rgb, centres = tme.paste_patches(
            rng, (H, W), _small_patches(ref, spec.max_area), candidates(n_real),
            max_overlap=spec.max_overlap, scale=spec.scale, base_scale=ref.base_scale,
            density=spec.density, labels=labels, rgb=rgb, max_count=n_real, avoid=near,
            max_avoid=spec.max_tumour_overlap)
    n_ell = want - n_real
    if n_ell:
        m0 = centres.shape[0]
        labels, par = tme.pack_ellipses(
            rng, (H, W), candidates(n_ell), spec.semi_axis, spec.axis_ratio, labels=labels,
            max_overlap=spec.max_overlap, avoid=near, max_avoid=spec.max_tumour_overlap,
            id_offset=m0, max_count=n_ell)
        if par.shape[0]:
            ell = labels > m0
            sub = np.where(ell, labels - m0, 0).astype(np.int32)
            overlap = min(spec.patch_overlap, ref.immune[0].shape[1] - 1)
            tex = texture_cells(rng, sub, rng.integers(0, len(ref.immune), size=par.shape[0]),
                                ref.immune, overlap)
            rgb[ell] = tex[ell]
            centres = np.concatenate([centres, par[:, :2]])
    return labels, rgb, centres


def _border_band(rng, shape, spec: AggregateSpec, ref: "PreparedReference", regions, abut,
                 agg_region, allowed, nuc_lab, agg_lab, agg_rgb, n_agg):
    """Lymphocytes between the tumour nuclei along the edge of the abutting aggregates.

    For each aggregate with ``abut`` true, the band of width uniform in ``spec.band`` px
    around it (outside every aggregate, inside ``allowed``) is packed with immune-nucleus
    patches until ``band_packing`` of its pixels off tumour nuclei are covered, each nucleus
    covering at most ``band_max_tumour`` of tumour-nucleus pixels, so that the band
    interleaves with the tumour cells next to the aggregate.
    Returns the updated aggregate labels / colours and the number of band nuclei.
    """
    H, W = shape
    if not np.any(abut):
        return agg_lab, agg_rgb, 0
    patches = _need(ref.immune_nuclei, "immune")
    area1 = _mean_area(patches, ref.base_scale)
    tumour = nuc_lab > 0
    n_band = 0
    for reg, on in zip(regions, abut):
        if not on:
            continue
        w = float(rng.uniform(*spec.band))
        d = ndi.distance_transform_edt(~reg)
        ring = (d > 0) & (d <= w) & ~agg_region & allowed
        free = ring & ~tumour
        want = int(round(float(rng.uniform(*spec.band_packing)) * free.sum() / area1))
        if want <= 0:
            continue
        cand = _centres_uniform(rng, free, want * spec.tries)
        before = n_agg + n_band
        agg_lab, agg_rgb, acc = tme.paste_patches(
            rng, (H, W), patches, cand, max_overlap=spec.max_overlap, scale=spec.scale,
            base_scale=ref.base_scale, density=spec.density, labels=agg_lab, rgb=agg_rgb,
            id_offset=before, max_count=want, avoid=tumour, max_avoid=spec.band_max_tumour)
        n_band += acc.shape[0]
    return agg_lab, agg_rgb, n_band


def _texture_ellipses(rng, labels, ref, overlap):
    """Dark nuclei (fibroblast, endothelial) textured with immune-nucleus patches; the blend
    overlap is capped for small (rescaled) patches."""
    n = int(labels.max(initial=0))
    overlap = min(overlap, ref.immune[0].shape[1] - 1)
    return texture_cells(rng, labels, rng.integers(0, len(ref.immune), size=n), ref.immune,
                         overlap)


def _layer(name, category, rgb, alpha, filters, rng, labels=None, centers=None, noise=None):
    rgba = np.concatenate([rgb.astype(np.float32), alpha[..., None].astype(np.float32)], axis=-1)
    f = tuple(filters.get(name, ()))
    return _bake(Layer(name, category, np.ascontiguousarray(rgba), noise=noise, labels=labels,
                       centers=centers, filters=f), f, rng)


def _draw_layers(script: Script, rng: np.random.Generator, ref: "PreparedReference", shape):
    """All layers, the target mask and the info record of one sample on an (H, W) canvas."""
    H, W = shape
    filters = script["filters"] or {}
    regs = script["regions"] or RegionsSpec()
    conn = script["connective"] or ConnectiveSpec()
    nsp = script["tumour_nuclei"] or NucleiSpec()
    csp = script["tumour_cells"] or TumourCellSpec()
    isp = script["immune_cells"] or ImmuneSpec()
    mspec = script["mask"] or MaskSpec()
    target = mspec.target
    colors = script["colors"]
    stroma_spec, agg_spec = script["stroma"], script["aggregates"]
    vc_spec = script["vessel_cells"]

    # Regions: fast-marching decomposition; the first `vessel` labels hold vessels, the next
    # ones (if [stroma] asks for them) fibrous stroma (seeds are i.i.d., so which labels is
    # immaterial).
    n_str = (int(rng.integers(stroma_spec.regions[0], stroma_spec.regions[1] + 1))
             if stroma_spec is not None else 0)
    if n_str:
        hi = min(regs.vessel + n_str, regs.count - 1)
        vessel, stroma = region_masks(rng, (H, W), regs, [(0, regs.vessel), (regs.vessel, hi)])
    else:
        vessel, stroma = vessel_regions(rng, (H, W), regs), np.zeros((H, W), bool)
    tumour_area = ~vessel & ~stroma

    ribbons = _ribbons(rng, vessel, conn)
    layers = [_noise_layer(rng, "background", np.ones((H, W), bool),
                           _colour(script, ref, "background", "background"),
                           filters.get("background", ())),
              _noise_layer(rng, "vessels", vessel, _colour(script, ref, "vessel", "vessel"),
                           filters.get("vessels", ())),
              _noise_layer(rng, "connective", ribbons,
                           _colour(script, ref, "stroma", "stroma"),
                           filters.get("connective", ()))]
    info = {}

    if vc_spec is not None:
        # Red cells fill part of the lumen; endothelial nuclei line the wall.
        lumen = vessel & ~ribbons
        rbc = tme.discs(rng, lumen, float(rng.uniform(*vc_spec.fill)), vc_spec.red_cell_radius)
        col = sample_object_colors(rng, colors.red_cells, 1)[0].astype(np.float32)
        rgb = np.where((rbc > 0)[..., None], col, 0).astype(np.float32)
        endo = np.zeros((H, W), np.int32)
        if vc_spec.endothelial_spacing > 0 and vessel.any() and not vessel.all():
            wall = vessel & ~ndi.binary_erosion(vessel, iterations=2)
            n_e = int(wall.sum() / 2.0 / vc_spec.endothelial_spacing)
            sm = ndi.gaussian_filter(vessel.astype(np.float64), 3.0)
            tangent = np.arctan2(ndi.sobel(sm, 0), ndi.sobel(sm, 1)) + np.pi / 2
            endo, _ = tme.oriented_ellipses(rng, (H, W), _centres_uniform(rng, wall, n_e),
                                            vc_spec.endothelial_semi_axis,
                                            vc_spec.endothelial_axis_ratio, angle=tangent,
                                            angle_jitter=0.15)
            tex = _texture_ellipses(rng, endo, ref, 2)
            rgb = np.where((endo > 0)[..., None], tex, rgb)
        lab = np.where(endo > 0, endo + int(rbc.max(initial=0)), rbc).astype(np.int32)
        noise = color_noise(rng, (H, W), colors.red_cells) * (rbc > 0)[..., None]
        layers.append(_layer("vessel_cells", "vessel_cell", rgb, lab > 0, filters, rng,
                             labels=lab, noise=noise.astype(np.float32)))
        # red cells carry the ids below the endothelial nuclei'
        layers[-1].info["nucleus_min_id"] = int(rbc.max(initial=0)) + 1
        info["red_cells"], info["endothelial_nuclei"] = int(rbc.max(initial=0)), int(endo.max(initial=0))

    if n_str:
        st = _noise_layer(rng, "stroma", stroma, _colour(script, ref, "stroma", "stroma"), filters.get("stroma", ()))
        area = float(stroma.sum())
        n_f = int(rng.poisson(float(rng.uniform(*stroma_spec.density)) * area / 1e4))
        n_real = int(rng.binomial(n_f, stroma_spec.real_fraction)) if ref.other_nuclei else 0
        ang = tme.smooth_angle_field(rng, (H, W), stroma_spec.corr)
        fl, _ = tme.oriented_ellipses(rng, (H, W), _centres_uniform(rng, stroma, n_f - n_real),
                                      stroma_spec.semi_axis, stroma_spec.axis_ratio, angle=ang,
                                      region=stroma)
        frgb = _texture_ellipses(rng, fl, ref, 2)
        fl, frgb, acc = tme.paste_patches(rng, (H, W), ref.other_nuclei,
                                          _centres_uniform(rng, stroma, n_real),
                                          scale=stroma_spec.scale, base_scale=ref.base_scale,
                                          region=stroma, labels=fl, rgb=frgb,
                                          id_offset=int(fl.max(initial=0)))
        on = fl > 0
        st.rgba[on, :3] = frgb[on]
        st.noise[on] = 0.0
        st.labels = fl
        layers.append(st)
        info["fibroblasts"] = int(fl.max(initial=0))

    agg_region = np.zeros((H, W), bool)
    if agg_spec is not None:
        agg_region, agg_lab, agg_rgb, n_agg, agg_regions = _aggregates(rng, (H, W), agg_spec,
                                                                        ref)
        info["aggregate_nuclei"] = n_agg
        info["aggregate_fraction"] = float(agg_region.mean())
    nuc_region = tumour_area & ~agg_region if (agg_spec is not None and agg_spec.exclude_tumour) else tumour_area
    abut = None
    if agg_spec is not None and agg_spec.abut > 0 and agg_regions:
        # Which aggregates abut a tumour nest (a border band is drawn after the tumour
        # nuclei); the others keep tumour nuclei `margin` px away.
        abut = rng.random(len(agg_regions)) < agg_spec.abut
        for reg, on in zip(agg_regions, abut):
            if not on and agg_spec.margin[1] > 0:
                m = float(rng.uniform(*agg_spec.margin))
                nuc_region &= ndi.distance_transform_edt(~reg) > m
        info["abutting_aggregates"] = int(abut.sum())
    for l in layers[3:]:
        # Endothelial nuclei reach past the vessel wall: tumour nuclei must not cover them.
        nuc_region &= ~l.footprint

    n_nuc = int(rng.integers(nsp.count[0], nsp.count[1] + 1))
    small_ids = []
    nuc_lab, nuc_rgb, nuc_ctr = place_nuclei(rng, (H, W), ref.nuclei, n_nuc, region=nuc_region,
                                             min_gap=nsp.min_gap, scale=nsp.scale,
                                             tries=nsp.tries, base_scale=ref.base_scale,
                                             flip=nsp.flip, density=nsp.density,
                                             small_fraction=nsp.small_fraction,
                                             small_area=nsp.small_area,
                                             small_density=nsp.small_density,
                                             small_ids=small_ids)
    n = nuc_ctr.shape[0]

    cell_speed = speed_field(rng, (H, W), csp.speed)
    cells = grow_cells(nuc_lab, cell_speed, csp.growth_time, allowed=tumour_area)
    n_coh = len(ref.tumour)
    cell_cohort = rng.integers(0, n_coh, size=n)
    cell_rgb = texture_cells(rng, cells, cell_cohort, ref.tumour, csp.patch_overlap)
    contour = region_boundaries(cells) & (cells > 0)
    ccol = np.asarray(colors.contour.mean, np.float32)
    op = np.float32(csp.contour_opacity)
    cell_rgb[contour] = (1 - op) * cell_rgb[contour] + op * ccol
    layers.append(_layer("tumour_cells", "tumour_cell", cell_rgb, cells > 0, filters, rng,
                         labels=cells))
    layers.append(_layer("tumour_nuclei", "tumour_nucleus", nuc_rgb, nuc_lab > 0, filters, rng,
                         labels=nuc_lab, centers=nuc_ctr))
    if nsp.small_fraction > 0:
        layers[-1].info["small_ids"] = tuple(small_ids)
        info["small_tumour_nuclei"] = len(small_ids)

    inf_spec = script["infiltrate"]
    if inf_spec is not None and inf_spec.per_tumour[1] > 0:
        # Single lymphocytes / plasma cells between the tumour cells of the nests.
        inf_lab, inf_rgb, inf_ctr = _infiltrate(rng, (H, W), inf_spec, ref, cells, nuc_lab,
                                                nuc_ctr)
        layers.append(_layer("infiltrate", "immune_cell", inf_rgb, inf_lab > 0, filters, rng,
                             labels=inf_lab, centers=inf_ctr))
        info["infiltrate"] = int(inf_ctr.shape[0])

    if abut is not None:
        # Aggregates against a tumour nest: a band of lymphocytes between its edge nuclei.
        agg_lab, agg_rgb, n_band = _border_band(rng, (H, W), agg_spec, ref, agg_regions, abut,
                                                agg_region, tumour_area, nuc_lab, agg_lab,
                                                agg_rgb, n_agg)
        info["border_band_nuclei"] = n_band
    else:
        n_band = 0

    if agg_spec is not None and agg_region.any():
        # The matrix between packed lymphocytes, with the nuclei over it; nuclei at the edge
        # may stick out of the grown region, as in real aggregates.
        col = sample_object_colors(rng, colors.aggregate, 1)[0].astype(np.float32)
        on = agg_lab > 0
        rgb = np.where(on[..., None], agg_rgb, col).astype(np.float32)
        alpha = agg_region | on
        noise = (color_noise(rng, (H, W), colors.aggregate) * (alpha & ~on)[..., None])
        layers.append(_layer("aggregates", "lymphocyte_aggregate", rgb, alpha, filters, rng,
                             labels=agg_lab, noise=noise.astype(np.float32)))
        if n_band:
            # ids n_agg + 1 .. n_agg + n_band are the border band's nuclei
            layers[-1].info["band_ids"] = (n_agg + 1, n_agg + n_band)

    m_ell = None
    if isp.real_fraction > 0 and ref.immune_nuclei:
        n_imm = int(rng.integers(isp.count[0], isp.count[1] + 1))
        n_real = int(rng.binomial(n_imm, isp.real_fraction))
        m_ell = n_imm - n_real
    imm_lab, imm_par = place_immune_cells(rng, (H, W), isp, count=m_ell)
    m = imm_par.shape[0]
    imm_rgb = texture_cells(rng, imm_lab, rng.integers(0, n_coh, size=m), ref.immune,
                            isp.patch_overlap)
    centres = imm_par[:, :2].copy()
    if m_ell is not None:
        # Real lymphocyte / plasma-cell nuclei: clustered like the ellipses (same rule).
        n_cl = int(rng.integers(isp.clusters[0], isp.clusters[1] + 1))
        cl = np.column_stack([rng.uniform(0, H, n_cl), rng.uniform(0, W, n_cl)])
        k = n_real * isp.tries
        pick = rng.random(k) < isp.cluster_fraction
        cand = np.column_stack([rng.uniform(0, H, k), rng.uniform(0, W, k)])
        cand[pick] = (cl[rng.integers(0, n_cl, size=int(pick.sum()))]
                      + isp.cluster_sigma * rng.standard_normal((int(pick.sum()), 2)))
        imm_lab, imm_rgb, acc = tme.paste_patches(
            rng, (H, W), ref.immune_nuclei, cand, max_overlap=isp.max_overlap, scale=isp.scale,
            base_scale=ref.base_scale, density=isp.density, labels=imm_lab, rgb=imm_rgb,
            id_offset=m, max_count=n_real)
        centres = np.concatenate([centres, acc])
    layers.append(_layer("immune_cells", "immune_cell", imm_rgb, imm_lab > 0, filters, rng,
                         labels=imm_lab, centers=centres))
    if isp.real_fraction == 0:
        layers[-1].axes = imm_par[:, 2:].copy()

    for name in ("pigment", "debris"):
        g = script[name]
        if g is None or not (rng.random() < g.probability):
            continue
        k = int(rng.integers(g.count[0], g.count[1] + 1))
        cen = np.column_stack([rng.uniform(0, H, k), rng.uniform(0, W, k)])
        gm = tme.granules(rng, (H, W), cen, g.radius, g.density, g.grain)
        spec = getattr(colors, name)
        col = sample_object_colors(rng, spec, 1)[0].astype(np.float32)
        rgb = np.where(gm[..., None], col, 0).astype(np.float32)
        noise = (color_noise(rng, (H, W), spec) * gm[..., None]).astype(np.float32)
        layers.append(_layer(name, name, rgb, gm, filters, rng, noise=noise))
        info[name] = k

    mask = class_masks(layers, mspec.classes) if mspec.classes else visible_mask(layers, target)
    info.update({"tumour_nuclei": n, "wanted_tumour_nuclei": n_nuc, "immune_cells": int(imm_lab.max(initial=0)),
                 "vessel_fraction": float(vessel.mean()), "reference": ref.fingerprint})
    return layers, mask, info


def _load_for_kind(path) -> ReferenceBundle:
    """``load_reference`` hook of the registered kind (``synth generate --reference``)."""
    return load_reference(path)


register_scenario(
    "scenario3", sections=_SECTIONS, generate=generate, required=("colors",), replace=True,
    load_reference=_load_for_kind, mask_classes=mask_classes,
    doc="H&E melanoma: real tumour-nucleus patches, fast-marching tumour cells, patch-textured "
        "immune cells; mask = visible tumour nuclei (needs a reference bundle)")
