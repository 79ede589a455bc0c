"""Layout statistics of annotated real nuclei: size, shape, clustering and mixing per class.

Scenario 3 has to place tumour nuclei among look-alike immune cells the way real melanoma
does, or a network trained on it learns that a dense cluster of dark round nuclei is tumour.
This module measures the arrangement of real nuclei from rasterised annotations, e.g. the
PUMA melanoma ROIs in ``../shared/data/layouts/puma`` (see that folder's README), so that the
generator's placement rules can be set from numbers rather than by eye::

    python -m synth layout-stats ../shared/data/layouts/puma -o synth/scenarios/puma_layout_stats.json

Input: a folder of ``*.npz`` files, each with ``instances`` (2-D integer array, 0 = background,
1..N nucleus ids) and ``fine_class`` (1-D integer array of length >= N + 1, the class of each
id; index 0 unused).  Fine classes (:data:`FINE_CLASSES`): 1 tumour, 2 lymphocyte, 3 plasma
cell, 4 histiocyte, 5 melanophage, 6 neutrophil, 7 stroma, 8 epithelium, 9 endothelium,
10 apoptotic; coarse classes (:data:`COARSE_CLASSES`): 1 tumour, 2-6 immune, 7-10 other.

Only derived statistics leave this module; the annotations themselves are read in place.

Definitions (lengths in pixels of the layouts and, times ``mpp``, in µm; quantiles
5/25/50/75/95 % with linear interpolation):

* **Shape** (per nucleus, from the pixel second moments as in
  :func:`skimage.measure.regionprops`): area, equivalent radius ``sqrt(area / pi)``, major /
  minor semi-axis of the ellipse with the same second moments, axis ratio ``minor / major``
  (<= 1, the convention of the scenario scripts), elongation ``major / minor`` (>= 1) and
  solidity (area / convex-hull area).  Nuclei touching the ROI border are cut and left out of
  the shape statistics (they are counted).
* **Gap** between two nuclei: the smallest distance between a pixel centre of one and a pixel
  centre of the other, minus 1 px.  Two pixel-adjacent nuclei have gap 0 (0.41 diagonally);
  for rasterised discs it approximates the continuous boundary-to-boundary distance.  A gap is
  searched up to ``2 * gap_um``; farther neighbours count as censored.
* **Aggregate**: a connected component of the graph of immune nuclei linked when their gap is
  at most ``gap_um``.  Boundaries rather than centres are linked because immune nuclei differ
  in size (lymphocytes vs histiocytes): a centre threshold tight enough for lymphocytes would
  split touching histiocytes, one loose enough for histiocytes would join lymphocytes with a
  cell-sized hole between them.  A single nucleus is an aggregate of size 1.
* **Aggregate area**: the union of the member nuclei closed (dilated, then eroded) with a
  Euclidean disc of radius ``gap_um / 2``, so that the gaps that link members are filled, with
  enclosed holes of at most ``max_hole_um2`` filled as well (a tumour nucleus surrounded by
  lymphocytes is inside the aggregate; a tumour nest ringed by lymphocytes is not).
  *Packing fraction*: member nucleus pixels / aggregate area.  A tumour (other) nucleus is
  *inside* an aggregate when at least half of its pixels lie in the aggregate area.
* **Touching**: gap <= 0.5 px (pixel-adjacent, diagonals included).  The rasteriser lets a
  later polygon overwrite an earlier one, so overlapping nuclei show up as touching ones.
* **Distances between centres** use the centroid of each nucleus; nearest neighbours outside
  the ROI are unseen, so distances near the border are slightly overestimated.
* **Local tumour density**: other tumour centres within ``density_radius_um`` of a tumour
  centre, per 1000 µm², for tumour nuclei at least that far from the ROI border.
* **Windows**: non-overlapping ``window`` x ``window`` tiles from the top-left corner of each
  ROI (the remainder strip is dropped); a nucleus belongs to the window holding its centroid.

Pooling: nucleus statistics pool all nuclei of all ROIs, aggregate statistics all aggregates,
window statistics all windows.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from vnumba.ops.fields import Checked, NonNegativeFloat, PositiveFloat, PositiveInt

__all__ = [
    "FORMAT",
    "VERSION",
    "FINE_CLASSES",
    "COARSE_CLASSES",
    "COARSE_OF_FINE",
    "QUANTILES",
    "LayoutParams",
    "RoiLayout",
    "read_layout",
    "find_layouts",
    "analyse_roi",
    "layout_statistics",
    "roi_statistics",
    "one_line",
]

FORMAT = "vnumba-layout-stats"
VERSION = 1

#: Fine class code -> name (PUMA nucleus classes).
FINE_CLASSES = {1: "tumour", 2: "lymphocyte", 3: "plasma_cell", 4: "histiocyte",
                5: "melanophage", 6: "neutrophil", 7: "stroma", 8: "epithelium",
                9: "endothelium", 10: "apoptotic"}
#: Coarse class code -> name.
COARSE_CLASSES = {1: "tumour", 2: "immune", 3: "other"}
#: Coarse class of each fine class code (index 0 = background).
COARSE_OF_FINE = np.array([0, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3], dtype=np.int8)
#: Quantiles (percent) reported for every distribution.
QUANTILES = (5, 25, 50, 75, 95)

TUMOUR, IMMUNE, OTHER = 1, 2, 3
# Gap at or below which two nuclei count as touching (diagonal neighbours: sqrt(2) - 1).
_TOUCH_PX = 0.5
_SIZE_CLASSES = (2, 5, 20, 50)
_SIZE_BINS = ((1, 1), (2, 4), (5, 19), (20, 49), (50, 99), (100, None))
# Distances (µm) at which the share of immune nuclei near a tumour nucleus is reported.
_NEAR_UM = (5.0, 10.0, 20.0, 30.0)


@dataclass(frozen=True)
class LayoutParams(Checked):
    """Parameters of :func:`layout_statistics` (lengths in µm unless named ``_px``).

    Attributes
    ----------
    mpp : float
        Pixel size of the layouts in µm (PUMA at 40x: about 0.24).
    window : int
        Side of the square windows in pixels (the scenario-3 image size, 300).
    gap_um : float
        Largest gap that links two immune nuclei into one aggregate.
    near_um : float
        "Near a tumour nucleus" threshold for immune nuclei (centre to centre).
    density_radius_um : float
        Radius of the disc that defines the local tumour density.
    max_hole_um2 : float
        Enclosed holes of an aggregate's closed area up to this size are part of the area.
    nest_radius_um, nest_min_tumour : float, int
        A nucleus lies in a *tumour-dense neighbourhood* (inside a tumour nest) when at least
        ``nest_min_tumour`` other tumour centres lie within ``nest_radius_um`` of its centre.
    border_um : float
        An immune nucleus whose gap to the nearest tumour nucleus is at most this lies *at the
        tumour border* (directly adjacent to a tumour nucleus).
    """

    mpp: PositiveFloat = 0.24
    window: PositiveInt = 300
    gap_um: PositiveFloat = 3.0
    near_um: PositiveFloat = 20.0
    density_radius_um: PositiveFloat = 25.0
    max_hole_um2: NonNegativeFloat = 300.0
    nest_radius_um: PositiveFloat = 15.0
    nest_min_tumour: PositiveInt = 3
    border_um: PositiveFloat = 2.0

    @property
    def gap_px(self) -> float:
        return self.gap_um / self.mpp

    @property
    def search_px(self) -> float:
        # Gaps are measured exactly up to here; the nearest-gap statistics of isolated nuclei
        # are censored beyond it (twice the link gap keeps the crops small).
        return 2.0 * self.gap_px


# ----------------------------------------------------------------------------------------
# Reading


@dataclass
class RoiLayout:
    """One annotated ROI: ``instances`` (H, W) int32 and ``fine_class`` (N + 1,) int16."""

    name: str
    instances: np.ndarray
    fine_class: np.ndarray


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_layout(path) -> RoiLayout:
    """Read and check one layout ``.npz`` file.

    Parameters
    ----------
    path : str or Path
        File with ``instances`` and ``fine_class`` (see the module docstring).

    Returns
    -------
    RoiLayout

    Raises
    ------
    ValueError
        One line naming the file, if it is unreadable or does not follow the format.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in ("instances", "fine_class") if k not in d.files]
            if missing:
                raise ValueError(f"{path}: malformed layout, missing {', '.join(missing)} "
                                 f"(has {', '.join(d.files) or 'nothing'})")
            inst, fc = d["instances"], d["fine_class"]
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable npz file ({one_line(exc)})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: not a readable npz file ({one_line(exc)})") from exc
    if inst.ndim != 2 or inst.size == 0 or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"{path}: malformed layout, instances must be a non-empty 2-D integer "
                         f"array, got {inst.dtype} {inst.shape}")
    if fc.ndim != 1 or fc.size == 0 or not np.issubdtype(fc.dtype, np.integer):
        raise ValueError(f"{path}: malformed layout, fine_class must be a 1-D integer array, "
                         f"got {fc.dtype} {fc.shape}")
    lo, hi = int(inst.min()), int(inst.max())
    if lo < 0:
        raise ValueError(f"{path}: malformed layout, negative instance id {lo}")
    if hi >= fc.size:
        raise ValueError(f"{path}: malformed layout, instance id {hi} but fine_class has only "
                         f"{fc.size} entries")
    bad = np.flatnonzero((fc[1:] < 1) | (fc[1:] > max(FINE_CLASSES)))
    if bad.size:
        i = int(bad[0]) + 1
        raise ValueError(f"{path}: malformed layout, id {i} has fine class {int(fc[i])} "
                         f"(expected 1..{max(FINE_CLASSES)})")
    return RoiLayout(path.stem, inst.astype(np.int32, copy=False), fc.astype(np.int16))


def find_layouts(folder) -> list[Path]:
    """Sorted ``*.npz`` files of ``folder``.

    Raises
    ------
    ValueError
        If ``folder`` does not exist, is not a folder or holds no ``.npz`` file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in folder.glob("*.npz") if p.is_file())
    if not files:
        raise ValueError(f"{folder}: no .npz layout files in the folder")
    return files


# ----------------------------------------------------------------------------------------
# Per-ROI measurements


def _nucleus_table(inst: np.ndarray, n: int) -> dict:
    """Area, centroid, second-moment axes, solidity, border flag per id 1..n (index i-1)."""
    from skimage.measure import regionprops

    H, W = inst.shape
    t = {k: np.full(n, np.nan) for k in ("area", "cy", "cx", "major", "minor", "solidity")}
    t["border"] = np.zeros(n, bool)
    t["fragments"] = np.zeros(n, np.int32)
    for rp in regionprops(inst):
        i = rp.label - 1
        r0, c0, r1, c1 = rp.bbox
        t["area"][i] = rp.area
        t["cy"][i], t["cx"][i] = rp.centroid
        # regionprops gives full axis lengths (4 sqrt(eigenvalue)); a disc of radius R has
        # semi-axes R.
        t["major"][i] = rp.axis_major_length / 2.0
        t["minor"][i] = rp.axis_minor_length / 2.0
        t["solidity"][i] = rp.solidity
        t["border"][i] = r0 == 0 or c0 == 0 or r1 == H or c1 == W
        # Overwritten polygons can split a nucleus; count its 8-connected pieces.
        t["fragments"][i] = ndi.label(rp.image, structure=np.ones((3, 3)))[1]
    return t


def _gaps(inst: np.ndarray, objs, search_px: float):
    """Pairs of nuclei with gap <= ``search_px``: arrays (i, j, gap), 0-based ids, i < j."""
    H, W = inst.shape
    pad = int(math.ceil(search_px + 1.0)) + 1
    lim = search_px + 1.0                      # gap = pixel distance - 1
    I, J, G = [], [], []
    for k, sl in enumerate(objs):
        if sl is None:
            continue
        lab = k + 1
        r0, r1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, H)
        c0, c1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, W)
        crop = inst[r0:r1, c0:c1]
        own = crop == lab
        # Only labels above this one: the pixel distance is symmetric, so each pair is
        # measured once, from its lower id.
        cand = crop > lab
        if not cand.any():
            continue
        d = ndi.distance_transform_edt(~own)
        sel = cand & (d <= lim)
        if not sel.any():
            continue
        labs, ds = crop[sel], d[sel]
        order = np.lexsort((ds, labs))
        labs, ds = labs[order], ds[order]
        first = np.r_[True, labs[1:] != labs[:-1]]
        I.append(np.full(int(first.sum()), k, np.int64))
        J.append(labs[first].astype(np.int64) - 1)
        G.append(ds[first] - 1.0)
    if not I:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(I), np.concatenate(J), np.concatenate(G)


def _nearest_gap(n, I, J, G, mask_i, mask_j):
    """Per nucleus (``mask_i``), the smallest gap to another nucleus in ``mask_j`` (inf if none
    within the search radius)."""
    out = np.full(n, np.inf)
    for a, b in ((I, J), (J, I)):
        keep = mask_i[a] & mask_j[b]
        np.minimum.at(out, a[keep], G[keep])
    out[~mask_i] = np.nan
    return out


def _closed_area(member_mask: np.ndarray, r: float, max_hole_px: float) -> np.ndarray:
    """Closing of ``member_mask`` with a Euclidean disc of radius ``r`` plus small holes.

    ``member_mask`` must carry a zero margin of at least ``r + 1`` pixels.
    """
    dil = ndi.distance_transform_edt(~member_mask) <= r
    closed = ndi.distance_transform_edt(dil) > r
    closed |= member_mask               # the erosion may round off single-pixel spurs
    holes, nh = ndi.label(ndi.binary_fill_holes(closed) & ~closed)
    if nh:
        sizes = np.bincount(holes.ravel(), minlength=nh + 1)
        small = sizes <= max_hole_px
        small[0] = False
        closed |= small[holes]
    return closed


def analyse_roi(roi: RoiLayout, params: LayoutParams) -> dict:
    """Measure one ROI: per-nucleus, per-aggregate and per-window arrays.

    Parameters
    ----------
    roi : RoiLayout
    params : LayoutParams

    Returns
    -------
    dict
        ``nuclei`` (dict of arrays indexed by id - 1), ``aggregates`` (list of dicts),
        ``windows`` (dict of arrays, one entry per window) and ``summary`` (small per-ROI row).
        Lengths in pixels.
    """
    inst, fc = roi.instances, roi.fine_class
    H, W = inst.shape
    n = fc.size - 1
    fine = fc[1:].astype(np.int64)
    coarse = COARSE_OF_FINE[fine].astype(np.int64)
    t = _nucleus_table(inst, n)
    t["fine"], t["coarse"] = fine, coarse
    visible = ~np.isnan(t["area"])
    objs = ndi.find_objects(inst, max_label=n) if n else []
    I, J, G = _gaps(inst, objs, params.search_px)
    t["gap_any"] = _nearest_gap(n, I, J, G, visible, visible)
    for c, name in COARSE_CLASSES.items():
        is_c = visible & (coarse == c)
        t[f"gap_same_{name}"] = _nearest_gap(n, I, J, G, is_c, is_c)
    t["touching"] = t["gap_any"] <= _TOUCH_PX

    # ---- aggregates: components of the immune graph with gap <= g
    imm = visible & (coarse == IMMUNE)
    link = imm[I] & imm[J] & (G <= params.gap_px)
    li, lj = I[link], J[link]
    if n:
        graph = coo_matrix((np.ones(li.size), (li, lj)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
    else:
        comp = np.zeros(0, np.int64)
    t["aggregate"] = np.where(imm, comp, -1)
    degree = np.bincount(np.r_[li, lj], minlength=n)
    t["degree"] = degree
    member_touch = np.zeros(n, bool)
    tl = G[link] <= _TOUCH_PX
    member_touch[li[tl]] = True
    member_touch[lj[tl]] = True
    member_gap = np.full(n, np.inf)
    np.minimum.at(member_gap, li, G[link])
    np.minimum.at(member_gap, lj, G[link])
    t["member_gap"] = member_gap
    t["member_touch"] = member_touch
    t["agg_size"] = np.zeros(n, np.int64)
    t["nn_member"] = np.full(n, np.nan)

    r_close = params.gap_px / 2.0
    max_hole_px = params.max_hole_um2 / params.mpp ** 2
    margin = int(math.ceil(r_close)) + 2
    areas_px = np.bincount(inst.ravel(), minlength=n + 1)[1:]
    aggregates = []
    inside_tumour = np.zeros(n, bool)
    labels_imm = np.unique(comp[imm]) if imm.any() else np.zeros(0, np.int64)
    members_of = {}
    if labels_imm.size:
        order = np.argsort(comp[imm], kind="stable")
        ids = np.flatnonzero(imm)[order]
        keys = comp[ids]
        cuts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
        for a, b in zip(cuts[:-1], cuts[1:]):
            members_of[int(keys[a])] = ids[a:b]
    rec_of = {}
    for key, members in members_of.items():
        size = members.size
        t["agg_size"][members] = size
        rec_of[key] = len(aggregates)
        rec = {"size": int(size),
               "n_lymphocyte": int((fine[members] == 2).sum()),
               "member_px": float(areas_px[members].sum())}
        if size == 1:
            rec.update(area_px=rec["member_px"], packing=1.0, n_tumour_inside=0,
                       n_other_inside=0, nucleus_px=rec["member_px"], border=bool(
                           t["border"][members[0]]), rg_px=0.0)
            aggregates.append(rec)
            continue
        r0 = min(objs[m][0].start for m in members)
        r1 = max(objs[m][0].stop for m in members)
        c0 = min(objs[m][1].start for m in members)
        c1 = max(objs[m][1].stop for m in members)
        # Crop with a zero margin; pixels outside the ROI stay outside the aggregate.
        R0, R1, C0, C1 = r0 - margin, r1 + margin, c0 - margin, c1 + margin
        crop = np.zeros((R1 - R0, C1 - C0), np.int32)
        s0, s1, t0, t1 = max(R0, 0), min(R1, H), max(C0, 0), min(C1, W)
        crop[s0 - R0:s1 - R0, t0 - C0:t1 - C0] = inst[s0:s1, t0:t1]
        in_roi = np.zeros(crop.shape, bool)
        in_roi[s0 - R0:s1 - R0, t0 - C0:t1 - C0] = True
        is_member = np.zeros(n + 1, bool)
        is_member[members + 1] = True
        mm = is_member[crop]
        area = _closed_area(mm, r_close, max_hole_px) & in_roi
        cnt = np.bincount(crop[area], minlength=n + 1)[1:]
        inside = (cnt > 0) & (cnt * 2 >= np.maximum(areas_px, 1)) & ~is_member[1:]
        inside_tumour |= inside & (coarse == TUMOUR)
        cy, cx = t["cy"][members], t["cx"][members]
        tree = cKDTree(np.c_[cy, cx])
        dnn, _ = tree.query(np.c_[cy, cx], k=2)
        t["nn_member"][members] = dnn[:, 1]
        rec.update(area_px=float(area.sum()),
                   packing=float(mm.sum() / max(area.sum(), 1)),
                   nucleus_px=float((crop[area] > 0).sum()),
                   n_tumour_inside=int((inside & (coarse == TUMOUR)).sum()),
                   n_other_inside=int((inside & (coarse == OTHER)).sum()),
                   border=bool(t["border"][members].any()),
                   rg_px=float(np.sqrt(((cy - cy.mean()) ** 2 + (cx - cx.mean()) ** 2).mean())))
        aggregates.append(rec)
    # Tumour nuclei inside an aggregate of any size >= 2 (per-aggregate counts are above).
    t["inside_tumour_any"] = inside_tumour

    # ---- tumour / immune distances
    tum = visible & (coarse == TUMOUR)
    t["nn_tumour"] = np.full(n, np.nan)
    t["local_density"] = np.full(n, np.nan)
    t["imm_to_tumour"] = np.full(n, np.nan)
    t["imm_gap_tumour"] = np.full(n, np.nan)
    if tum.any():
        tc = np.c_[t["cy"][tum], t["cx"][tum]]
        tree = cKDTree(tc)
        if tum.sum() >= 2:
            d, _ = tree.query(tc, k=2)
            t["nn_tumour"][tum] = d[:, 1]
        R = params.density_radius_um / params.mpp
        inner = tum & (t["cy"] >= R) & (t["cy"] <= H - 1 - R) & (t["cx"] >= R) \
            & (t["cx"] <= W - 1 - R)
        if inner.any():
            cnt = tree.query_ball_point(np.c_[t["cy"][inner], t["cx"][inner]], R,
                                        return_length=True) - 1
            t["local_density"][inner] = cnt / (math.pi * params.density_radius_um ** 2) * 1000.0
        if imm.any():
            d, _ = tree.query(np.c_[t["cy"][imm], t["cx"][imm]], k=1)
            t["imm_to_tumour"][imm] = d
            tumour_px = (COARSE_OF_FINE[np.r_[0, fine]][inst] == TUMOUR)
            dt = ndi.distance_transform_edt(~tumour_px)
            ids = np.flatnonzero(imm) + 1
            t["imm_gap_tumour"][imm] = np.asarray(ndi.minimum(dt, labels=inst, index=ids)) - 1.0

    # ---- tumour nests: tumour centres within nest_radius of each tumour / immune nucleus,
    # for nuclei at least that far from the ROI border (a disc cut by the border would count
    # too few); the nucleus itself does not count.
    t["nest_count"] = np.full(n, np.nan)
    Rn = params.nest_radius_um / params.mpp
    interior = visible & (t["cy"] >= Rn) & (t["cy"] <= H - 1 - Rn) & (t["cx"] >= Rn) \
        & (t["cx"] <= W - 1 - Rn) & (tum | imm)
    if interior.any():
        if tum.any():
            cnt = tree.query_ball_point(np.c_[t["cy"][interior], t["cx"][interior]], Rn,
                                        return_length=True)
            t["nest_count"][interior] = cnt - tum[interior]
        else:
            t["nest_count"][interior] = 0.0
    in_nest = t["nest_count"] >= params.nest_min_tumour

    # ---- aggregate border: members directly adjacent to a tumour nucleus
    border_px = params.border_um / params.mpp
    for key, members in members_of.items():
        g = t["imm_gap_tumour"][members]
        aggregates[rec_of[key]]["n_border"] = int(np.count_nonzero(g <= border_px))

    # ---- windows
    w = params.window
    coarse_px = COARSE_OF_FINE[np.r_[0, fine]][inst]
    win = {k: [] for k in ("tumour", "immune", "other", "cover_tumour", "cover_immune",
                           "cover_other", "agg20_inside", "agg20_touch", "max_agg_inside")}
    # Hidden ids (no pixel left) have no centroid; -1 keeps them out of every window.
    ry = np.floor(np.nan_to_num(t["cy"], nan=-1.0)).astype(np.int64)
    rx = np.floor(np.nan_to_num(t["cx"], nan=-1.0)).astype(np.int64)
    for y0 in range(0, H - w + 1, w):
        for x0 in range(0, W - w + 1, w):
            inw = visible & (ry >= y0) & (ry < y0 + w) & (rx >= x0) & (rx < x0 + w)
            for c, name in COARSE_CLASSES.items():
                win[name].append(int((inw & (coarse == c)).sum()))
            cov = np.bincount(coarse_px[y0:y0 + w, x0:x0 + w].ravel(), minlength=4)
            for c, name in COARSE_CLASSES.items():
                win[f"cover_{name}"].append(float(cov[c]) / (w * w))
            big = inw & (t["agg_size"] >= 20)
            per = np.bincount(comp[big], minlength=1) if big.any() else np.zeros(1, np.int64)
            win["agg20_touch"].append(bool(big.any()))
            win["agg20_inside"].append(bool(per.max() >= 20))
            agg_in = inw & imm
            win["max_agg_inside"].append(int(np.bincount(comp[agg_in]).max()) if agg_in.any()
                                         else 0)
    # Explicit dtypes: a ROI smaller than the window has no window at all.
    kinds = {"agg20_inside": bool, "agg20_touch": bool, "cover_tumour": float,
             "cover_immune": float, "cover_other": float}
    windows = {k: np.asarray(v, dtype=kinds.get(k, np.int64)) for k, v in win.items()}

    sizes = np.array([a["size"] for a in aggregates], np.int64)
    summary = {"roi": roi.name, "shape": [int(H), int(W)], "n_nuclei": int(n),
               **{name: int((coarse == c).sum()) for c, name in COARSE_CLASSES.items()},
               "largest_aggregate": int(sizes.max()) if sizes.size else 0,
               "aggregates_ge20": int((sizes >= 20).sum()),
               "nest_tumour_interior": int((tum & ~np.isnan(t["nest_count"])).sum()),
               "nest_immune": int((imm & in_nest).sum())}
    return {"nuclei": t, "aggregates": aggregates, "windows": windows, "summary": summary}


# ----------------------------------------------------------------------------------------
# Summaries


def _g(x):
    """Round to 5 significant digits for a readable JSON (float or None)."""
    if x is None or not np.isfinite(x):
        return None
    return float(f"{float(x):.5g}")


def _dist(values, scale: float | None = None, unit: str = "px", censor: float | None = None):
    """Quantile summary of ``values`` (NaN dropped), in ``unit`` and, with ``scale``, in µm.

    ``censor``: ``inf`` marks a value known only to exceed ``censor`` (in ``unit``); the mean
    and any quantile that falls among such values are reported as ``None``.
    """
    v = np.asarray(values, float).ravel()
    v = v[~np.isnan(v)]
    out = {"n": int(v.size)}
    if censor is not None:
        out["n_censored"] = int(np.isinf(v).sum())
        out[f"censored_above_{unit}"] = _g(censor)
    # A finite stand-in for the censored values: every quantile above the censoring level
    # touches one of them.
    big = np.where(np.isfinite(v), v, np.finfo(float).max / 4)

    def block(f):
        lim = np.inf if censor is None else censor * f
        if v.size == 0:
            return {"mean": None, **{f"q{q:02d}": None for q in QUANTILES}}
        qs = np.percentile(big * f, QUANTILES)
        return {"mean": _g(v.mean() * f) if np.isfinite(v).all() else None,
                **{f"q{q:02d}": (_g(x) if x <= lim * (1 + 1e-12) else None)
                   for q, x in zip(QUANTILES, qs)}}

    out[unit] = block(1.0)
    if scale is not None:
        out[{"px": "um", "px2": "um2"}[unit]] = block(scale)
    return out


def _plain(values):
    """Quantile summary of a dimensionless quantity."""
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    out = {"n": int(v.size), "mean": _g(v.mean()) if v.size else None}
    qs = np.percentile(v, QUANTILES) if v.size else [None] * len(QUANTILES)
    out.update({f"q{q:02d}": _g(x) for q, x in zip(QUANTILES, qs)})
    return out


def _frac(num, den):
    return _g(num / den) if den else None


def _shape_block(t, sel, mpp, search_px):
    shape_sel = sel & ~t["border"] & ~np.isnan(t["area"])
    area = t["area"][shape_sel]
    major, minor = t["major"][shape_sel], t["minor"][shape_sel]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(major > 0, minor / major, np.nan)
        elong = np.where(minor > 0, major / minor, np.nan)
    return {
        "count": int(sel.sum()),
        "n_visible": int((sel & ~np.isnan(t["area"])).sum()),
        "n_shape": int(shape_sel.sum()),
        "n_fragmented": int((sel & (t["fragments"] > 1)).sum()),
        "area": _dist(area, mpp ** 2, "px2"),
        "radius": _dist(np.sqrt(area / math.pi), mpp),
        "major_semi_axis": _dist(major, mpp),
        "minor_semi_axis": _dist(minor, mpp),
        "axis_ratio": _plain(ratio),
        "elongation": _plain(elong),
        "solidity": _plain(t["solidity"][shape_sel]),
        "frac_touching": _frac(int((sel & t["touching"]).sum()),
                               int((sel & ~np.isnan(t["area"])).sum())),
        "nearest_gap_any": _dist(t["gap_any"][sel], mpp, censor=search_px),
    }


def _small_nuclei(T, sel, mpp):
    """How small the smallest nuclei of ``sel`` are against the median (area quantiles)."""
    a = T["area"][sel]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0}
    q = {k: float(np.percentile(a, k)) for k in (5, 10, 25, 50)}
    out = {"n": int(a.size),
           **{f"area_q{k:02d}": {"px2": _g(v), "um2": _g(v * mpp ** 2)} for k, v in q.items()}}
    for k in (5, 10, 25):
        out[f"area_ratio_q{k:02d}_q50"] = _g(q[k] / q[50])
        # the linear scale factor of a nucleus with that area (radius ratio)
        out[f"radius_ratio_q{k:02d}_q50"] = _g(math.sqrt(q[k] / q[50]))
    return out


def _nest_block(T, results, params):
    """Immune nuclei inside tumour-dense neighbourhoods (see :class:`LayoutParams`)."""
    k = params.nest_min_tumour
    cnt = T["nest_count"]
    ok = ~np.isnan(cnt)
    imm = ok & (T["coarse"] == IMMUNE)
    tum = ok & (T["coarse"] == TUMOUR)
    n_in = imm & (cnt >= k)
    per_roi = [r["summary"]["nest_immune"] / r["summary"]["nest_tumour_interior"]
               for r in results if r["summary"]["nest_tumour_interior"] >= 20]
    size = T["agg_size"][n_in]
    fine_in = T["fine"][n_in]
    gap = T["imm_gap_tumour"][n_in]
    return {
        "radius_um": _g(params.nest_radius_um),
        "min_tumour": int(k),
        "n_immune": int(imm.sum()),
        "n_tumour": int(tum.sum()),
        "tumour_neighbours_of_immune": _plain(cnt[imm]),
        "tumour_neighbours_of_tumour": _plain(cnt[tum]),
        "frac_immune_in_nest": _frac(int(n_in.sum()), int(imm.sum())),
        "frac_tumour_in_nest": _frac(int((tum & (cnt >= k)).sum()), int(tum.sum())),
        "immune_in_nest_per_tumour": _frac(int(n_in.sum()), int(tum.sum())),
        "immune_in_nest_per_tumour_per_roi": _plain(per_roi),
        "frac_immune_in_nest_by_min_tumour": {
            f"{j}": _frac(int((imm & (cnt >= j)).sum()), int(imm.sum())) for j in range(1, 7)},
        "in_nest_fine_class": {name: _frac(int((fine_in == c).sum()), int(n_in.sum()))
                               for c, name in FINE_CLASSES.items()
                               if COARSE_OF_FINE[c] == IMMUNE},
        "in_nest_aggregate_size": {
            label: _frac(int(((size >= lo) & (size <= (hi or size.max(initial=0)))).sum()),
                         int(n_in.sum()))
            for label, lo, hi in (("1", 1, 1), ("2-4", 2, 4), ("5-19", 5, 19), (">=20", 20, None))},
        "in_nest_gap_to_nearest_tumour": _dist(gap, params.mpp),
        "in_nest_centre_distance_to_nearest_tumour": _dist(T["imm_to_tumour"][n_in], params.mpp),
        "in_nest_frac_touching_tumour": _frac(int((gap <= _TOUCH_PX).sum()), int(n_in.sum())),
    }


def _border_block(T, aggs, params):
    """Aggregate members directly adjacent to tumour nuclei (gap <= ``border_um``)."""
    mpp = params.mpp
    bpx = params.border_um / mpp
    imm = (T["coarse"] == IMMUNE) & ~np.isnan(T["imm_gap_tumour"])
    out = {"border_um": _g(params.border_um)}
    for k in (5, 20):
        sel = [a for a in aggs if a["size"] >= k]
        mem = imm & (T["agg_size"] >= k)
        nb = np.array([a.get("n_border", 0) for a in sel], np.int64)
        sz = np.array([a["size"] for a in sel], np.int64)
        abut = nb > 0
        out[f"ge{k}"] = {
            "n_aggregates": len(sel),
            "frac_abutting_tumour": _frac(int(abut.sum()), len(sel)),
            "frac_with_ge3_border_members": _frac(int((nb >= 3).sum()), len(sel)),
            "border_members_per_abutting_aggregate": _plain(nb[abut]),
            "border_fraction_of_abutting_aggregate": _plain(nb[abut] / np.maximum(sz[abut], 1)),
            "frac_members_at_border": _frac(int((mem & (T["imm_gap_tumour"] <= bpx)).sum()),
                                            int(mem.sum())),
            "members_gap_to_nearest_tumour": _dist(T["imm_gap_tumour"][mem], mpp),
        }
    return out


def _aggregate_blocks(T, aggs, params):
    mpp = params.mpp
    imm = T["coarse"] == IMMUNE
    imm &= ~np.isnan(T["area"])
    n_imm = int(imm.sum())
    sizes = np.array([a["size"] for a in aggs], np.int64)
    hist = []
    for lo, hi in _SIZE_BINS:
        m = (sizes >= lo) & (sizes <= (hi if hi is not None else sizes.max(initial=0)))
        hist.append({"size": f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi else f">={lo}"),
                     "n_aggregates": int(m.sum()), "n_nuclei": int(sizes[m].sum()),
                     "frac_immune_nuclei": _frac(int(sizes[m].sum()), n_imm)})
    out = {
        "n_immune_nuclei": n_imm,
        "n_aggregates": int(sizes.size),
        "largest": int(sizes.max(initial=0)),
        "frac_immune_isolated": _frac(int(sizes[sizes == 1].sum()), n_imm),
        **{f"frac_immune_in_ge{k}": _frac(int(sizes[sizes >= k].sum()), n_imm)
           for k in (5, 20, 50)},
        "size_histogram": hist,
    }
    agg_size = T["agg_size"]
    for k in _SIZE_CLASSES:
        sel = [a for a in aggs if a["size"] >= k]
        mem = imm & (agg_size >= k)
        if not sel:
            out[f"ge{k}"] = {"n_aggregates": 0}
            continue
        area = np.array([a["area_px"] for a in sel])
        n_t = np.array([a["n_tumour_inside"] for a in sel])
        rg = np.array([a["rg_px"] for a in sel])
        out[f"ge{k}"] = {
            "n_aggregates": len(sel),
            "n_nuclei": int(mem.sum()),
            "frac_touching_roi_border": _frac(sum(a["border"] for a in sel), len(sel)),
            "size": _plain([a["size"] for a in sel]),
            "area": _dist(area, mpp ** 2, "px2"),
            "equivalent_radius": _dist(np.sqrt(area / math.pi), mpp),
            "radius_of_gyration": _dist(rg, mpp),
            # For the generator's Gaussian clusters: a 2-D normal with per-axis sigma has
            # radius of gyration sigma * sqrt(2).
            "gaussian_sigma_equivalent": _dist(rg / math.sqrt(2.0), mpp),
            "packing_fraction": _plain([a["packing"] for a in sel]),
            "packing_fraction_pooled": _g(sum(a["member_px"] for a in sel) / area.sum()),
            "nucleus_coverage_pooled": _g(sum(a["nucleus_px"] for a in sel) / area.sum()),
            "frac_lymphocyte": _frac(sum(a["n_lymphocyte"] for a in sel), int(mem.sum())),
            "nn_centre_distance": _dist(T["nn_member"][mem], mpp),
            "nn_member_gap": _dist(T["member_gap"][mem], mpp),
            "degree": _plain(T["degree"][mem]),
            "frac_touching_member": _frac(int((mem & T["member_touch"]).sum()), int(mem.sum())),
            "frac_with_tumour_inside": _frac(int((n_t > 0).sum()), len(sel)),
            "tumour_inside_per_aggregate": _plain(n_t),
            "n_tumour_inside": int(n_t.sum()),
            "tumour_inside_per_1000um2": _g(n_t.sum() / (area.sum() * mpp ** 2) * 1000.0),
            "other_inside_per_1000um2": _g(sum(a["n_other_inside"] for a in sel)
                                           / (area.sum() * mpp ** 2) * 1000.0),
        }
    return out


def _files_digest(files) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode("utf-8") + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def layout_statistics(folder, mpp: float = 0.24, window: int = 300, progress=None, *,
                      gap_um: float = 3.0, near_um: float = 20.0,
                      density_radius_um: float = 25.0, max_hole_um2: float = 300.0,
                      nest_radius_um: float = 15.0, nest_min_tumour: int = 3,
                      border_um: float = 2.0) -> dict:
    """Statistics of the nucleus layouts in ``folder`` (see the module docstring).

    Parameters
    ----------
    folder : str or Path
        Folder of ``*.npz`` layouts (``instances``, ``fine_class``).
    mpp : float
        Pixel size of the layouts in µm; lengths are reported in pixels and in µm.
    window : int
        Side in pixels of the non-overlapping windows.
    progress : callable or None
        Called with a one-line message per ROI.
    gap_um, near_um, density_radius_um, max_hole_um2, nest_radius_um, border_um : float
    nest_min_tumour : int
        See :class:`LayoutParams`.

    Returns
    -------
    dict
        JSON-ready: ``format``, ``version``, ``source``, ``parameters``, ``definitions``,
        ``nuclei`` (per fine and coarse class), ``aggregates``, ``tumour``, ``tumour_immune``,
        ``windows``, ``other_cells`` and ``rois`` (one small row per ROI).

    Raises
    ------
    ValueError
        Missing folder, no ``.npz`` file, a malformed file (the message names it) or a bad
        parameter.
    """
    params = LayoutParams(mpp=mpp, window=window, gap_um=gap_um, near_um=near_um,
                          density_radius_um=density_radius_um, max_hole_um2=max_hole_um2,
                          nest_radius_um=nest_radius_um, nest_min_tumour=nest_min_tumour,
                          border_um=border_um)
    files = find_layouts(folder)
    results = []
    for k, path in enumerate(files, 1):
        roi = read_layout(path)
        r = analyse_roi(roi, params)
        results.append(r)
        if progress is not None:
            s = r["summary"]
            progress(f"[{k}/{len(files)}] {roi.name}: {s['n_nuclei']} nuclei, largest immune "
                     f"aggregate {s['largest_aggregate']}")
    return _combine(results, params, Path(folder), files)


def roi_statistics(rois, mpp: float = 0.24, window: int = 300, **kw) -> dict:
    """The statistics of :func:`layout_statistics` for layouts in memory.

    Parameters
    ----------
    rois : iterable of RoiLayout
        E.g. generated samples (:func:`synth.scenario3.sample_layout`).
    mpp, window, **kw
        See :class:`LayoutParams`.

    Returns
    -------
    dict
        As :func:`layout_statistics`; ``source`` has no folder and no file digest.
    """
    params = LayoutParams(mpp=mpp, window=window, **kw)
    results = [analyse_roi(r, params) for r in rois]
    if not results:
        raise ValueError("no layouts to measure")
    return _combine(results, params, None, None)


def _combine(results, params: LayoutParams, folder: Path | None, files) -> dict:
    mpp = params.mpp
    keys = results[0]["nuclei"].keys()
    T = {k: np.concatenate([r["nuclei"][k] for r in results]) for k in keys}
    aggs = [a for r in results for a in r["aggregates"]]
    Wd = {k: np.concatenate([r["windows"][k] for r in results]) for k in results[0]["windows"]}
    vis = ~np.isnan(T["area"])
    fine, coarse = T["fine"], T["coarse"]

    nuclei = {"fine": {name: _shape_block(T, fine == c, mpp, params.search_px)
                       for c, name in FINE_CLASSES.items()},
              "coarse": {name: _shape_block(T, coarse == c, mpp, params.search_px)
                         for c, name in COARSE_CLASSES.items()}}
    n_rois = len(results)

    tum = vis & (coarse == TUMOUR)
    imm = vis & (coarse == IMMUNE)
    roi_area_um2 = sum(r["summary"]["shape"][0] * r["summary"]["shape"][1]
                       for r in results) * mpp ** 2
    tumour = {
        "count": int(tum.sum()),
        "rois_with_tumour": int(sum(r["summary"]["tumour"] > 0 for r in results)),
        "density_per_1000um2_pooled": _g(tum.sum() / roi_area_um2 * 1000.0),
        "nn_centre_distance": _dist(T["nn_tumour"][tum], mpp),
        "nn_gap_tumour": _dist(T["gap_same_tumour"][tum], mpp, censor=params.search_px),
        "local_density_per_1000um2": _plain(T["local_density"][tum]),
        "frac_inside_immune_aggregate": _frac(int((tum & T["inside_tumour_any"]).sum()),
                                              int(tum.sum())),
        "small_nuclei": _small_nuclei(T, tum & ~T["border"], mpp),
    }
    has_t = imm & ~np.isnan(T["imm_to_tumour"])
    near_px = params.near_um / mpp
    ti = {
        "n_immune": int(imm.sum()),
        "n_immune_in_rois_with_tumour": int(has_t.sum()),
        "centre_distance_to_nearest_tumour": _dist(T["imm_to_tumour"][has_t], mpp),
        "gap_to_nearest_tumour": _dist(T["imm_gap_tumour"][has_t], mpp),
        f"frac_within_{params.near_um:g}um_centre": _frac(
            int((T["imm_to_tumour"][has_t] <= near_px).sum()), int(has_t.sum())),
        f"frac_within_{params.near_um:g}um_gap": _frac(
            int((T["imm_gap_tumour"][has_t] <= near_px).sum()), int(has_t.sum())),
        "frac_touching_tumour": _frac(int((T["imm_gap_tumour"][has_t] <= _TOUCH_PX).sum()),
                                      int(has_t.sum())),
        "by_aggregate_size": {},
    }
    ti["frac_within_um"] = {
        f"{u:g}": {"centre": _frac(int((T["imm_to_tumour"][has_t] <= u / mpp).sum()),
                                   int(has_t.sum())),
                   "gap": _frac(int((T["imm_gap_tumour"][has_t] <= u / mpp).sum()),
                                int(has_t.sum()))}
        for u in _NEAR_UM}
    ti["nest"] = _nest_block(T, results, params)
    ti["aggregate_border"] = _border_block(T, aggs, params)
    for label, lo, hi in (("isolated", 1, 1), ("2-19", 2, 19), ("ge20", 20, None)):
        m = has_t & (T["agg_size"] >= lo) & ((T["agg_size"] <= hi) if hi else True)
        ti["by_aggregate_size"][label] = {
            "n": int(m.sum()),
            "centre_distance_to_nearest_tumour": _dist(T["imm_to_tumour"][m], mpp),
            f"frac_within_{params.near_um:g}um_centre": _frac(
                int((T["imm_to_tumour"][m] <= near_px).sum()), int(m.sum()))}

    nw = int(Wd["tumour"].size)
    windows = {
        "n_windows": nw,
        "window_px": params.window,
        "window_um": _g(params.window * mpp),
        **{f"count_{name}": _plain(Wd[name]) for name in COARSE_CLASSES.values()},
        **{f"coverage_{name}": _plain(Wd[f"cover_{name}"]) for name in COARSE_CLASSES.values()},
        "frac_no_tumour": _frac(int((Wd["tumour"] == 0).sum()), nw),
        "frac_no_immune": _frac(int((Wd["immune"] == 0).sum()), nw),
        "frac_immune_ge20": _frac(int((Wd["immune"] >= 20).sum()), nw),
        "frac_with_aggregate_ge20_inside": _frac(int(Wd["agg20_inside"].sum()), nw),
        "frac_with_aggregate_ge20_touching": _frac(int(Wd["agg20_touch"].sum()), nw),
        "frac_no_tumour_among_aggregate_ge20_windows": _frac(
            int((Wd["agg20_inside"] & (Wd["tumour"] == 0)).sum()), int(Wd["agg20_inside"].sum())),
        "largest_aggregate_part_inside": _plain(Wd["max_agg_inside"]),
        "tumour_count_where_aggregate_ge20_inside": _plain(Wd["tumour"][Wd["agg20_inside"]]),
        "immune_count_where_aggregate_ge20_inside": _plain(Wd["immune"][Wd["agg20_inside"]]),
    }

    other = {}
    for label, classes in (("stroma", (7,)), ("endothelium", (9,)), ("stroma_endothelium", (7, 9))):
        sel = np.isin(fine, classes)
        blk = _shape_block(T, sel, mpp, params.search_px)
        shape_sel = sel & ~T["border"] & vis
        el = T["major"][shape_sel] / np.maximum(T["minor"][shape_sel], 1e-9)
        other[label] = {"count": blk["count"], "n_shape": blk["n_shape"],
                        "elongation": blk["elongation"], "axis_ratio": blk["axis_ratio"],
                        "major_semi_axis": blk["major_semi_axis"],
                        "minor_semi_axis": blk["minor_semi_axis"], "area": blk["area"],
                        "frac_elongation_ge2": _frac(int((el >= 2).sum()), int(el.size)),
                        "frac_elongation_ge3": _frac(int((el >= 3).sum()), int(el.size))}

    return {
        "format": FORMAT,
        "version": VERSION,
        "source": ({"folder": folder.resolve().name, "path": str(folder), "n_rois": n_rois,
                    "n_nuclei": int(T["area"].size),
                    "files_sha256": _files_digest(files),
                    "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat()}
                   if folder is not None else
                   {"folder": None, "n_rois": n_rois, "n_nuclei": int(T["area"].size)}),
        "parameters": {**asdict(params), "gap_px": _g(params.gap_px),
                       "gap_search_px": _g(params.search_px), "touch_gap_px": _TOUCH_PX,
                       "quantiles_percent": list(QUANTILES)},
        "definitions": _DEFINITIONS,
        "nuclei": nuclei,
        "aggregates": _aggregate_blocks(T, aggs, params),
        "tumour": tumour,
        "tumour_immune": ti,
        "windows": windows,
        "other_cells": other,
        "rois": [r["summary"] for r in results],
    }


_DEFINITIONS = {
    "units": "lengths as {'px': ..., 'um': ...} at parameters.mpp; areas as px2 / um2; "
             "quantiles qNN in percent (linear interpolation)",
    "shape": "second moments as skimage regionprops: semi-axes = axis_length / 2; axis_ratio = "
             "minor / major; elongation = major / minor; radius = sqrt(area / pi); nuclei "
             "touching the ROI border excluded (count includes them)",
    "gap": "smallest distance between pixel centres of two nuclei minus 1 px (adjacent = 0); "
           "searched up to gap_search_px, beyond that censored (None in quantiles)",
    "touching": "gap <= touch_gap_px (pixel-adjacent incl. diagonal); overlapping polygons "
                "are rasterised as touching nuclei",
    "aggregate": "connected component of immune (fine 2-6) nuclei linked when gap <= gap_px; "
                 "size = nuclei; a single nucleus is an aggregate of size 1",
    "aggregate_area": "member nuclei closed with a Euclidean disc of radius gap_px / 2, holes "
                      "<= max_hole_um2 filled, clipped to the ROI; packing_fraction = member "
                      "nucleus pixels / area; nucleus_coverage includes non-member nuclei",
    "inside": "a non-member nucleus with >= 50 % of its pixels in an aggregate's area",
    "nn_centre_distance": "centroid distance to the nearest other member of the same aggregate",
    "radius_of_gyration": "RMS distance of member centroids from their mean",
    "local_density": "other tumour centres within density_radius_um / (pi r^2), per 1000 um2, "
                     "for tumour nuclei at least that far from the ROI border",
    "tumour_immune": "per immune nucleus in a ROI with tumour: centroid distance and gap to the "
                     "nearest tumour nucleus of the same ROI; frac_within_um: share with centre "
                     "distance / gap <= the key in um",
    "nest": "a tumour or immune nucleus at least nest_radius_um from the ROI border is in a "
            "tumour nest when >= nest_min_tumour other tumour centres lie within "
            "nest_radius_um of its centre; immune_in_nest_per_tumour = such immune nuclei / "
            "tumour nuclei with the same border rule (per ROI: ROIs with >= 20 of them)",
    "aggregate_border": "members of immune aggregates whose gap to the nearest tumour nucleus "
                        "is <= border_um; an aggregate abuts tumour when it has one",
    "small_nuclei": "area quantiles of tumour nuclei not touching the ROI border; ratios to "
                    "the median area and their square roots (linear scale factors)",
    "windows": "non-overlapping window x window tiles from the top-left corner (remainder "
               "dropped); a nucleus counts in the window holding its centroid; "
               "aggregate_ge20_inside = >= 20 centroids of one aggregate in the window, "
               "_touching = some centroid of an aggregate of >= 20 in the window",
}
