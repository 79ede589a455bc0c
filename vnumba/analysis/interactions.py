"""Tumour–immune interaction statistics of a slide's nuclei, in micrometres.

One definition of every figure, used by the whole-slide command (``python -m vnumba.slide``)
and by the synthetic slide's truth alike.  Input: the nuclei as arrays — centroids in level-0
pixels, their classes (``tumour``, ``immune``, ``other``), optionally their areas — the slide's
µm/px and its tissue (area, or a tissue mask).  Neighbour searches use
:class:`scipy.spatial.cKDTree`; everything is converted to µm first, so the figures hold at any
magnification.

Coordinates
-----------
Centroids follow the cell table (:mod:`vnumba.analysis.objects`): ``x`` = column, ``y`` = row,
pixel centres at integer coordinates.  Polygons and the grid follow QuPath: the origin is the
top-left *corner* of the first pixel, so a centroid ``(x, y)`` lies at ``(x + 1/2, y + 1/2)``
there.

The article's neighbourhood: ``R`` = 20 µm
------------------------------------------
Scenario 1's target rule (:data:`vnumba.scenarios.SCENARIOS` ``["scenario1"].density_rule``,
the ``[mask]`` table of ``synth/scenarios/scenario1.toml``) looks at a disc of **40 px** around
an immune cell; the scenario scripts model the article's 20x objective at
``[scenario] mpp = 0.5`` µm/px (:data:`ARTICLE_MPP`, checked against the scripts by the tests).
The neighbourhood is therefore ``40 px * 0.5 µm/px =`` **20 µm** (:data:`NEIGHBOURHOOD_UM`),
measured here centroid to centroid, inclusive: an immune cell is *near a tumour nucleus* when
a tumour nucleus' centroid lies within ``R`` µm of its centroid.

Immune-rich: scenario 2's density rule
--------------------------------------
Scenario 2 marks immune cells whose 40 px disc (**20 µm**, :data:`IMMUNE_RICH_RADIUS_UM`) is
more than **20 %** (:data:`IMMUNE_RICH_THRESHOLD`) covered by immune cells.  From nuclei (not
pixels) the coverage is approximated as

    (sum of the areas of the immune nuclei whose centroid lies within R of the cell's centroid,
     the cell itself included) / (pi R^2) > threshold,

i.e. each immune nucleus counts with its whole area when its centroid is inside the disc and
not at all otherwise (the two errors cancel on average for nuclei much smaller than the disc:
~19 µm² against 1257 µm²), and the disc counts whole even where it reaches beyond the tissue
(the generator counts in-image pixels only), which under-estimates the fraction at the tissue's
edge.  Without nucleus areas every immune nucleus counts
:data:`IMMUNE_NUCLEUS_AREA_UM2` = 19.4 µm² (``pi a b`` at the midpoints of scenario 2's
immune-cell semi-axes, 4.5-6.5 x 3.8-5.2 px at 0.5 µm/px; with that area a cell needs at least
13 immune nuclei, itself included, in its disc).  As on real annotations
(:func:`vnumba.analysis.evaluation.scenario_rule`), a "cell" is a nucleus: the fraction is a
nuclear-area fraction (lymphocytes are mostly nucleus).

**Immune-rich areas** are the union of the rule's discs (radius ``R`` around the centroid) of
the immune cells that pass it — every disc of the union holds more than 20 % immune nuclear
area — clipped to the tissue when a tissue mask is given, as shapely polygons in level-0
pixels (64-gon discs, 0.16 % smaller than true discs).

The slide's call
----------------
``immune-rich`` when the immune-rich areas cover at least **10 %** of the tissue
(:data:`CALL_FRACTION`, ``immune_rich_area_mm2 / tissue_area_mm2 >= 0.10``), else
``immune-poor``.  The article makes no slide-level call: 10 % is this project's convention,
stated in every report (``immune_call_threshold``) and configurable
(:class:`InteractionConfig` ``call_fraction``).  It follows the habit of H&E immune scoring to
call on an area share of the tissue (as the International TILs Working Group's stromal TIL
score, whose lowest cut-offs in use are around 10 %), applied here to the area that scenario 2's
rule marks.

Grid
----
Counts per class on square cells of ``grid_um`` = 250 µm (level-0 pixels, cells aligned with the
analysed region's top-left corner), and densities per mm² of *tissue in the cell* (from the
tissue mask; without one, the cell's area within the region).  Cells with less tissue than
``grid_min_tissue`` (10 %) of a cell have no density (NaN in arrays, ``None`` in JSON), so that
slivers of tissue do not give huge densities.  A cell is *tumour region* when it holds at least
``tumour_region_min`` (10) tumour nuclei and they are at least ``tumour_region_share`` (50 %) of
its nuclei; the density figure outlines these cells (:func:`vnumba.analysis.plots.density_figure`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from vnumba.ops.fields import Checked, Fraction, NonNegativeInt, PositiveFloat, PositiveInt
from vnumba.scenarios import SCENARIOS

__all__ = ["CLASSES", "ARTICLE_MPP", "NEIGHBOURHOOD_RULE", "NEIGHBOURHOOD_UM", "IMMUNE_RICH_RULE",
           "IMMUNE_RICH_RADIUS_UM", "IMMUNE_RICH_THRESHOLD", "IMMUNE_NUCLEUS_AREA_UM2", "CALL_FRACTION",
           "InteractionConfig", "DensityGrid", "Interactions", "compute_interactions", "interaction_stats"]

#: Nucleus classes, in the order of every per-class array.
CLASSES = ("tumour", "immune", "other")

#: µm/px of the article's images as the scenario scripts model them (``[scenario] mpp`` of
#: ``synth/scenarios/scenario1.toml`` and ``scenario2.toml``: the article's 20x objective).  The
#: analysis layer may not import ``synth``; ``tests/test_interactions.py`` checks this value
#: against the scripts.
ARTICLE_MPP = 0.5

#: Scenario 1's density rule (immune cells with tumour cells in a 40 px disc): its radius is
#: the article's neighbourhood.
NEIGHBOURHOOD_RULE = SCENARIOS["scenario1"].density_rule
#: The article's neighbourhood in µm: 40 px * 0.5 µm/px = 20 µm.
NEIGHBOURHOOD_UM = float(NEIGHBOURHOOD_RULE.radius) * ARTICLE_MPP

#: Scenario 2's density rule (immune cells whose 40 px disc is > 20 % immune).
IMMUNE_RICH_RULE = SCENARIOS["scenario2"].density_rule
#: Its radius in µm: 40 px * 0.5 µm/px = 20 µm.
IMMUNE_RICH_RADIUS_UM = float(IMMUNE_RICH_RULE.radius) * ARTICLE_MPP
#: Its threshold (fraction of the disc covered by immune nuclei, strictly greater): 0.2.
IMMUNE_RICH_THRESHOLD = float(IMMUNE_RICH_RULE.threshold)
#: Area counted for an immune nucleus when none is given: pi * 2.75 * 2.25 µm^2 = 19.4 µm^2, the
#: midpoints of scenario 2's immune-cell semi-axes (4.5-6.5 x 3.8-5.2 px) at 0.5 µm/px.
IMMUNE_NUCLEUS_AREA_UM2 = math.pi * (5.5 * ARTICLE_MPP) * (4.5 * ARTICLE_MPP)
#: The slide is called immune-rich when immune-rich areas cover at least this fraction of
#: its tissue (this project's convention; see the module's docstring).
CALL_FRACTION = 0.10


@dataclass(frozen=True)
class InteractionConfig(Checked):
    """Settings of :func:`compute_interactions` (defaults: the article's rules in µm).

    Attributes
    ----------
    radius_um : float
        Neighbourhood ``R`` for "immune cell near a tumour nucleus" (:data:`NEIGHBOURHOOD_UM`, 20).
    grid_um : float
        Side of the grid's square cells (250).
    rich_radius_um, rich_threshold : float
        Scenario 2's rule: disc radius (20 µm) and immune nuclear-area fraction (> 0.2).
    immune_nucleus_area_um2 : float
        Area of an immune nucleus when no areas are given (19.4 µm²).
    call_fraction : float
        Immune-rich area share of the tissue for an ``immune-rich`` call (0.10).
    hist_bin_um, hist_max_um : float
        Histogram of immune-to-nearest-tumour distances: bins of 10 µm up to 200 µm (larger
        distances are counted in ``above_max``).
    grid_min_tissue : float
        Least tissue share of a grid cell for it to have a density (0.1).
    tumour_region_share, tumour_region_min : float, int
        A grid cell is tumour region with at least ``tumour_region_min`` tumour nuclei making up
        at least ``tumour_region_share`` of its nuclei (0.5, 10).
    disc_segments : int
        Segments per quarter circle of the immune-rich discs (16: a 64-gon).
    """

    radius_um: PositiveFloat = NEIGHBOURHOOD_UM
    grid_um: PositiveFloat = 250.0
    rich_radius_um: PositiveFloat = IMMUNE_RICH_RADIUS_UM
    rich_threshold: Fraction = IMMUNE_RICH_THRESHOLD
    immune_nucleus_area_um2: PositiveFloat = IMMUNE_NUCLEUS_AREA_UM2
    call_fraction: Fraction = CALL_FRACTION
    hist_bin_um: PositiveFloat = 10.0
    hist_max_um: PositiveFloat = 200.0
    grid_min_tissue: Fraction = 0.1
    tumour_region_share: Fraction = 0.5
    tumour_region_min: NonNegativeInt = 10
    disc_segments: PositiveInt = 16

    def __post_init__(self):
        super().__post_init__()
        if self.hist_max_um < self.hist_bin_um:
            raise ValueError(f"hist_max_um ({self.hist_max_um}) must be >= hist_bin_um ({self.hist_bin_um})")

    @classmethod
    def from_dict(cls, d: dict | None) -> "InteractionConfig":
        """Config from a mapping; an unknown key is an error that names it."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in names:
                raise ValueError(f"unknown interaction setting {k!r} (known: {', '.join(sorted(names))})")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DensityGrid:
    """Counts and densities of the nuclei on a square grid.

    Attributes
    ----------
    origin : (float, float)
        Level-0 ``(x, y)`` of the grid's top-left corner (QuPath's corner convention).
    cell_px : float
        Cell side in level-0 pixels (``cell_um / mpp``).
    cell_um : float
    counts : ndarray of int64, shape (3, rows, cols)
        Nuclei per class (:data:`CLASSES` order) per cell.
    tissue_mm2 : ndarray of float64, shape (rows, cols)
        Tissue area in each cell.
    density : ndarray of float64, shape (3, rows, cols)
        ``counts / tissue_mm2`` per mm² of tissue; NaN where the cell has too little tissue.
    tumour_region : ndarray of bool, shape (rows, cols)
        Cells that are tumour region (see :class:`InteractionConfig`).
    """

    origin: tuple
    cell_px: float
    cell_um: float
    counts: np.ndarray
    tissue_mm2: np.ndarray
    density: np.ndarray
    tumour_region: np.ndarray

    @property
    def shape(self) -> tuple:
        return tuple(int(v) for v in self.tissue_mm2.shape)

    def to_dict(self) -> dict:
        """JSON-serialisable form (nested lists rows x cols; ``None`` for undefined densities)."""
        def grid(a, kind=float):
            return [[(None if (kind is float and not math.isfinite(v)) else kind(v)) for v in row]
                    for row in a.tolist()]
        return {
            "origin_px": [float(self.origin[0]), float(self.origin[1])],
            "cell_px": float(self.cell_px), "cell_um": float(self.cell_um),
            "shape": list(self.shape), "classes": list(CLASSES),
            "counts": {c: grid(self.counts[k], int) for k, c in enumerate(CLASSES)},
            "tissue_mm2": grid(self.tissue_mm2),
            "density_per_mm2": {c: grid(self.density[k]) for k, c in enumerate(CLASSES)},
            "tumour_region": grid(self.tumour_region, bool),
        }


@dataclass(frozen=True)
class Interactions:
    """Result of :func:`compute_interactions`.

    Attributes
    ----------
    stats : dict
        The slide's figures, JSON-serialisable (plain ints, floats, strings, ``None`` where
        undefined); keys in :func:`compute_interactions`.
    dist_tumour_um : ndarray of float64, shape (n,)
        Per nucleus: distance (µm, centroid to centroid) to the nearest tumour nucleus — for a
        tumour nucleus the nearest *other* one; NaN where there is none.
    near_tumour : ndarray of bool, shape (n,)
        Immune cells with a tumour nucleus within ``radius_um`` (False for other classes).
    immune_neighbour : ndarray of bool, shape (n,)
        Tumour nuclei with an immune cell within ``radius_um`` (False for other classes).
    immune_rich : ndarray of bool, shape (n,)
        Immune cells that pass scenario 2's rule (False for other classes).
    immune_fraction : ndarray of float64, shape (n,)
        The rule's immune nuclear-area fraction of the disc (NaN for non-immune nuclei).
    grid : DensityGrid
    immune_rich_areas : shapely Polygon or MultiPolygon
        Immune-rich areas in level-0 pixels (corner convention); empty when there are none.
    """

    stats: dict
    dist_tumour_um: np.ndarray
    near_tumour: np.ndarray
    immune_neighbour: np.ndarray
    immune_rich: np.ndarray
    immune_fraction: np.ndarray
    grid: DensityGrid
    immune_rich_areas: object


# ----------------------------------------------------------------------------- helpers
def _num(v):
    """Plain float, or None for NaN/inf/None (JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _ratio(a, b):
    return float(a) / float(b) if b else None


def _distance_summary(d_um: np.ndarray, cfg: InteractionConfig) -> dict | None:
    """Quantiles (NumPy's linear interpolation), mean and histogram of distances in µm."""
    if d_um.size == 0:
        return None
    edges = np.arange(0.0, cfg.hist_max_um + 0.5 * cfg.hist_bin_um, cfg.hist_bin_um)
    if edges[-1] < cfg.hist_max_um:
        edges = np.append(edges, cfg.hist_max_um)
    counts, _ = np.histogram(d_um[d_um < edges[-1]], bins=edges)
    q = np.quantile(d_um, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(d_um.size), "mean": float(d_um.mean()), "min": float(d_um.min()), "max": float(d_um.max()),
            "q05": float(q[0]), "q25": float(q[1]), "q50": float(q[2]), "q75": float(q[3]), "q95": float(q[4]),
            "histogram": {"edges_um": [float(e) for e in edges], "counts": [int(c) for c in counts],
                          "above_max": int(np.count_nonzero(d_um >= edges[-1]))}}


def _grouped_sum(a: np.ndarray, idx: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Sum ``a`` along ``axis`` into ``n`` groups by the non-decreasing group index ``idx``
    (entries outside ``[0, n)`` dropped)."""
    keep = (idx >= 0) & (idx < n)
    a = np.compress(keep, a, axis=axis)
    idx = idx[keep]
    shape = list(a.shape)
    shape[axis] = n
    out = np.zeros(shape, np.float64)
    if idx.size:
        starts = np.r_[0, np.nonzero(np.diff(idx))[0] + 1]
        sums = np.add.reduceat(a.astype(np.float64), starts, axis=axis)
        np.moveaxis(out, axis, 0)[idx[starts]] = np.moveaxis(sums, axis, 0)
    return out


def _grid(xc, yc, cls_idx, mpp, cfg, region, tissue_mask, tissue_downsample, tissue_offset) -> DensityGrid:
    """Counts and densities on the grid; ``xc, yc`` in corner convention."""
    X0, Y0, W, H = region
    cell = cfg.grid_um / mpp
    cols = int(math.ceil(W / cell - 1e-9)) if W > 0 else 0
    rows = int(math.ceil(H / cell - 1e-9)) if H > 0 else 0
    counts = np.zeros((3, rows, cols), np.int64)
    if xc.size and rows and cols:
        gi = np.floor((yc - Y0) / cell).astype(np.int64)
        gj = np.floor((xc - X0) / cell).astype(np.int64)
        ok = (gi >= 0) & (gi < rows) & (gj >= 0) & (gj < cols)
        np.add.at(counts, (cls_idx[ok], gi[ok], gj[ok]), 1)
    px_mm2 = (mpp * 1e-3) ** 2
    if tissue_mask is not None:
        m = np.asarray(tissue_mask, bool)
        ds = float(tissue_downsample)
        ox, oy = (float(v) for v in tissue_offset)
        # Each mask pixel's tissue goes to the cell of its centre (the mask is coarse: 8-32
        # level-0 px per pixel against a cell of ~500-1000 px).
        ci = np.floor((oy + (np.arange(m.shape[0]) + 0.5) * ds - Y0) / cell).astype(np.int64)
        cj = np.floor((ox + (np.arange(m.shape[1]) + 0.5) * ds - X0) / cell).astype(np.int64)
        per_row = _grouped_sum(m, cj, cols, axis=1)             # (h, cols)
        tissue_px = _grouped_sum(per_row, ci, rows, axis=0)     # (rows, cols) in mask pixels
        tissue = tissue_px * ds * ds * px_mm2
    else:
        # No mask: the cell's area inside the analysed region.
        ex = np.minimum((np.arange(cols) + 1) * cell, W) - np.arange(cols) * cell
        ey = np.minimum((np.arange(rows) + 1) * cell, H) - np.arange(rows) * cell
        tissue = np.outer(ey, ex) * px_mm2
    full = cell * cell * px_mm2
    ok = tissue >= cfg.grid_min_tissue * full
    ok &= tissue > 0
    density = np.full((3, rows, cols), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        density[:, ok] = counts[:, ok] / tissue[ok]
    total = counts.sum(axis=0)
    tumour_region = (counts[0] >= max(cfg.tumour_region_min, 1)) & \
        (counts[0] >= cfg.tumour_region_share * np.maximum(total, 1))
    return DensityGrid(origin=(float(X0), float(Y0)), cell_px=float(cell), cell_um=float(cfg.grid_um),
                       counts=counts, tissue_mm2=tissue.astype(np.float64), density=density,
                       tumour_region=tumour_region)


# ----------------------------------------------------------------------------- main entry
def compute_interactions(centroids, classes, mpp: float, tissue_area_mm2: float | None = None, *,
                         areas_um2=None, tissue_mask=None, tissue_downsample: float = 1.0,
                         tissue_offset=(0.0, 0.0), region=None, config=None) -> Interactions:
    """Tumour–immune interaction figures of a slide (or region) from its classed nuclei.

    Parameters
    ----------
    centroids : array_like of float64, shape (n, 2)
        ``(x, y)`` = (column, row) in level-0 pixels, pixel centres at integer coordinates.
    classes : array_like of str, shape (n,)
        ``tumour``, ``immune`` or ``other`` (anything else is an error).
    mpp : float
        µm per level-0 pixel.
    tissue_area_mm2 : float, optional
        Tissue area; default: the tissue mask's area.  One of the two is required.
    areas_um2 : array_like of float, shape (n,), optional
        Nucleus areas (µm²) for the immune-rich rule (default: every immune nucleus
        ``config.immune_nucleus_area_um2``).
    tissue_mask : ndarray of bool, shape (h, w), optional
        Tissue at a low resolution: pixel ``(i, j)`` covers level-0
        ``[x0 + j d, x0 + (j + 1) d] x [y0 + i d, y0 + (i + 1) d]``; gives the grid's tissue
        per cell and clips the immune-rich areas.
    tissue_downsample : float
        ``d``: level-0 pixels per mask pixel.
    tissue_offset : (float, float)
        ``(x0, y0)``: level-0 corner of the mask's first pixel.
    region : (x, y, width, height), optional
        The analysed level-0 box, the grid's extent (default: the mask's box, else from
        ``(0, 0)`` to the last centroid).
    config : InteractionConfig or dict, optional

    Returns
    -------
    Interactions
        ``stats`` has the keys ``nuclei``, ``tumour_nuclei``, ``immune_cells``, ``other_nuclei``,
        ``mpp``, ``tissue_area_mm2``, ``tumour_density_per_mm2``, ``immune_density_per_mm2``,
        ``other_density_per_mm2``, ``radius_um``, ``radius_source``, ``immune_near_tumour``,
        ``immune_near_tumour_fraction``, ``tumour_with_immune_neighbour``,
        ``tumour_with_immune_neighbour_fraction``, ``immune_to_nearest_tumour_um`` (``n``,
        ``mean``, ``min``, ``max``, ``q05``..``q95``, ``histogram``), ``immune_rich_rule``,
        ``immune_rich_cells``, ``immune_rich_area_mm2``, ``immune_rich_area_fraction``,
        ``immune_call`` (``immune-rich`` / ``immune-poor``; None without tissue),
        ``immune_call_threshold`` (the area fraction), ``immune_call_rule`` (in words),
        ``grid_um``, ``grid_shape``, ``tumour_region_area_mm2``,
        ``immune_density_in_tumour_region_per_mm2``, ``config``.  Densities and fractions are
        None where undefined (no tissue, no tumour nuclei, ...), never NaN.
    """
    import shapely
    from scipy.spatial import cKDTree

    cfg = config if isinstance(config, InteractionConfig) else InteractionConfig.from_dict(config)
    if not (isinstance(mpp, (int, float, np.floating)) and math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number, got {mpp!r}")
    mpp = float(mpp)
    pts = np.asarray(centroids, np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"centroids must have shape (n, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("centroids contain NaN or inf")
    n = pts.shape[0]
    cls = np.asarray(classes).astype(str).reshape(-1)
    if cls.size != n:
        raise ValueError(f"classes has {cls.size} entries, centroids {n}")
    bad = sorted(set(np.unique(cls).tolist()) - set(CLASSES))
    if bad:
        raise ValueError(f"unknown nucleus class(es) {bad}; expected one of {list(CLASSES)}")
    cls_idx = np.zeros(n, np.int64)
    for k, c in enumerate(CLASSES):
        cls_idx[cls == c] = k
    if areas_um2 is not None:
        areas = np.asarray(areas_um2, np.float64).reshape(-1)
        if areas.size != n:
            raise ValueError(f"areas_um2 has {areas.size} entries, centroids {n}")
        if not np.all(np.isfinite(areas) & (areas >= 0)):
            raise ValueError("areas_um2 must be finite and >= 0")
    if tissue_mask is not None:
        tissue_mask = np.asarray(tissue_mask, bool)
        if tissue_mask.ndim != 2:
            raise ValueError(f"tissue_mask must be 2-D (h, w), got shape {tissue_mask.shape}")
        if not (math.isfinite(tissue_downsample) and tissue_downsample > 0):
            raise ValueError(f"tissue_downsample must be > 0, got {tissue_downsample!r}")
    if tissue_area_mm2 is None:
        if tissue_mask is None:
            raise ValueError("give tissue_area_mm2 or a tissue_mask")
        tissue_area_mm2 = float(tissue_mask.sum()) * (tissue_downsample * mpp * 1e-3) ** 2
    tissue_area_mm2 = float(tissue_area_mm2)
    if not (math.isfinite(tissue_area_mm2) and tissue_area_mm2 >= 0):
        raise ValueError(f"tissue_area_mm2 must be a finite number >= 0, got {tissue_area_mm2!r}")

    p_um = pts * mpp                                   # neighbour searches in µm
    it, ii, io = (np.nonzero(cls_idx == k)[0] for k in range(3))
    n_t, n_i, n_o = it.size, ii.size, io.size
    R = float(cfg.radius_um)

    # Nearest tumour nucleus of every nucleus (a tumour nucleus: the nearest other one).
    dist = np.full(n, np.nan)
    if n_t:
        tt = cKDTree(p_um[it])
        others = np.nonzero(cls_idx != 0)[0]
        if others.size:
            dist[others] = tt.query(p_um[others], k=1)[0]
        if n_t > 1:
            dist[it] = tt.query(p_um[it], k=2)[0][:, 1]
    near = np.zeros(n, bool)
    near[ii] = dist[ii] <= R                           # NaN (no tumour) compares False
    neighbour = np.zeros(n, bool)
    if n_t and n_i:
        d_ti = cKDTree(p_um[ii]).query(p_um[it], k=1)[0]
        neighbour[it] = d_ti <= R

    # Scenario 2's rule on the immune cells: immune nuclear area within the disc / disc area.
    rr = float(cfg.rich_radius_um)
    frac = np.full(n, np.nan)
    rich = np.zeros(n, bool)
    if n_i:
        a_imm = areas[ii] if areas_um2 is not None else np.full(n_i, cfg.immune_nucleus_area_um2)
        ti = cKDTree(p_um[ii])
        nb = ti.query_ball_point(p_um[ii], rr, return_sorted=False)      # includes the cell itself
        lens = np.fromiter((len(v) for v in nb), np.int64, n_i)
        flat = np.fromiter((j for v in nb for j in v), np.int64, int(lens.sum()))
        owner = np.repeat(np.arange(n_i), lens)
        s = np.bincount(owner, weights=a_imm[flat], minlength=n_i)
        frac[ii] = s / (math.pi * rr * rr)
        rich[ii] = frac[ii] > cfg.rich_threshold

    # Immune-rich areas: union of the discs of the cells passing the rule (corner convention).
    rr_px = rr / mpp
    if rich.any():
        centres = shapely.points(pts[rich] + 0.5)
        areas_geom = shapely.union_all(shapely.buffer(centres, rr_px, quad_segs=cfg.disc_segments))
    else:
        areas_geom = shapely.Polygon()
    if tissue_mask is not None and not areas_geom.is_empty:
        from vnumba.analysis.qupath import mask_polygon
        areas_geom = shapely.intersection(areas_geom, mask_polygon(tissue_mask, tissue_offset, tissue_downsample))
        if areas_geom.geom_type == "GeometryCollection":
            areas_geom = shapely.union_all([g for g in areas_geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")])
    rich_mm2 = float(areas_geom.area) * (mpp * 1e-3) ** 2

    # Grid.
    if region is None:
        if tissue_mask is not None:
            ox, oy = (float(v) for v in tissue_offset)
            region = (ox, oy, tissue_mask.shape[1] * tissue_downsample, tissue_mask.shape[0] * tissue_downsample)
        elif n:
            region = (0.0, 0.0, float(np.ceil(pts[:, 0].max() + 1)), float(np.ceil(pts[:, 1].max() + 1)))
        else:
            region = (0.0, 0.0, 0.0, 0.0)
    region = tuple(float(v) for v in region)
    if len(region) != 4 or region[2] < 0 or region[3] < 0:
        raise ValueError(f"region must be (x, y, width >= 0, height >= 0), got {region!r}")
    grid = _grid(pts[:, 0] + 0.5, pts[:, 1] + 0.5, cls_idx, mpp, cfg, region, tissue_mask,
                 tissue_downsample, tissue_offset)
    tr_mm2 = float(grid.tissue_mm2[grid.tumour_region].sum())
    tr_imm = int(grid.counts[1][grid.tumour_region].sum())

    has_tissue = tissue_area_mm2 > 0
    rich_frac = rich_mm2 / tissue_area_mm2 if has_tissue else None
    call = None
    if has_tissue:
        call = "immune-rich" if rich_frac >= cfg.call_fraction else "immune-poor"
    stats = {
        "nuclei": int(n), "tumour_nuclei": int(n_t), "immune_cells": int(n_i), "other_nuclei": int(n_o),
        "mpp": mpp, "tissue_area_mm2": tissue_area_mm2,
        "tumour_density_per_mm2": _ratio(n_t, tissue_area_mm2),
        "immune_density_per_mm2": _ratio(n_i, tissue_area_mm2),
        "other_density_per_mm2": _ratio(n_o, tissue_area_mm2),
        "radius_um": R,
        "radius_source": (f"scenario 1 density rule: {NEIGHBOURHOOD_RULE.radius:g} px at {ARTICLE_MPP:g} um/px "
                          f"(the article's 20x) = {NEIGHBOURHOOD_UM:g} um"
                          + ("" if R == NEIGHBOURHOOD_UM else f"; set to {R:g} um")),
        "immune_near_tumour": int(near.sum()),
        "immune_near_tumour_fraction": _ratio(near.sum(), n_i),
        "tumour_with_immune_neighbour": int(neighbour.sum()),
        "tumour_with_immune_neighbour_fraction": _ratio(neighbour.sum(), n_t),
        "immune_to_nearest_tumour_um": _distance_summary(dist[ii], cfg) if n_t else None,
        "immune_rich_rule": {
            "radius_um": rr, "threshold": float(cfg.rich_threshold),
            "immune_nucleus_area_um2": None if areas_um2 is not None else float(cfg.immune_nucleus_area_um2),
            "source": (f"scenario 2 density rule: {IMMUNE_RICH_RULE.radius:g} px at {ARTICLE_MPP:g} um/px, "
                       f"immune fraction > {IMMUNE_RICH_THRESHOLD:g}; immune nuclear area with centroid in the "
                       "disc / disc area")},
        "immune_rich_cells": int(rich.sum()),
        "immune_rich_area_mm2": rich_mm2,
        "immune_rich_area_fraction": _num(rich_frac),
        "immune_call": call,
        "immune_call_threshold": float(cfg.call_fraction),
        "immune_call_rule": (f"immune-rich when immune-rich areas cover >= {100 * cfg.call_fraction:g} % of the "
                             "tissue (project convention)"),
        "grid_um": float(cfg.grid_um), "grid_shape": list(grid.shape),
        "tumour_region_area_mm2": tr_mm2,
        "immune_density_in_tumour_region_per_mm2": _ratio(tr_imm, tr_mm2),
        "config": cfg.to_dict(),
    }
    return Interactions(stats=stats, dist_tumour_um=dist, near_tumour=near, immune_neighbour=neighbour,
                        immune_rich=rich, immune_fraction=frac, grid=grid, immune_rich_areas=areas_geom)


def interaction_stats(centroids, classes, mpp: float, tissue_area_mm2: float | None = None, **kwargs) -> dict:
    """The ``stats`` dict of :func:`compute_interactions` (same arguments)."""
    return compute_interactions(centroids, classes, mpp, tissue_area_mm2, **kwargs).stats
