"""From a probability mask to individual objects (cells or nuclei) and their export.

Objects are the connected components of ``mask > threshold``; touching objects are split by a
watershed on the Euclidean distance transform, seeded by its h-maxima (maxima that rise at
least ``h`` pixels above the saddle to any higher maximum).  A neck narrower than the objects
on either side therefore separates them, while the shallow ridges of an elongated or irregular
object do not.

Coordinates: ``x`` is the column, ``y`` the row.  In the table (CSV) a pixel's centre is at
integer coordinates (``x = column index``, as NumPy indexes).  In GeoJSON, as in QuPath, the
image origin is the top-left *corner* of the first pixel, so pixel ``(row, col)`` covers
``[col, col + 1] x [row, row + 1]``; polygon vertices are therefore shifted by +0.5 relative to
the table's coordinates.

With the per-class maps of a multi-class model (``object_table(..., class_probs=, class_names=)``,
:mod:`vnumba.analysis.classes`) every object also carries its class probabilities and class:
the CSV gets the columns ``class, p_<name>...`` (``p_tumour, p_immune, p_other``) and each
GeoJSON feature its own QuPath class (:data:`vnumba.scenarios.MASK_CLASSES`) and the
probabilities among its measurements.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from vnumba.ops.masks import label_areas

__all__ = [
    "split_touching", "label_objects", "ObjectTable", "object_table", "table_to_csv",
    "write_objects_csv", "objects_to_geojson", "write_objects_geojson", "object_polygons",
]


def _check_2d(name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {a.shape}")


# ----------------------------------------------------------------------------- labelling
def split_touching(binary: np.ndarray, h: float = 2.0) -> np.ndarray:
    """Label the foreground, splitting touching blobs by a distance-transform watershed.

    Parameters
    ----------
    binary : ndarray of bool, shape (H, W)
    h : float
        Minimum dynamic (in pixels of the distance transform) of a maximum to seed its own
        object.  ``h = 0`` seeds every regional maximum; ``h = inf`` never splits.

    Returns
    -------
    ndarray of int32, shape (H, W)
        0 = background, 1..N objects (numbered in raster order of their seeds).  Every
        foreground pixel belongs to an object.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    _check_2d("binary", binary)
    if binary.dtype != bool:
        raise TypeError(f"binary must be a bool array, got {binary.dtype}")
    if not h >= 0:
        raise ValueError(f"h must be >= 0, got {h}")
    comps, n = ndi.label(binary)
    if n == 0:
        return comps.astype(np.int32)
    if not np.isfinite(h):
        return comps.astype(np.int32)
    dist = ndi.distance_transform_edt(binary)
    # h_maxima needs h > 0; h = 0 means plain regional maxima.
    if h > 0:
        peaks = h_maxima(dist, h).astype(bool)
    else:
        from skimage.morphology import local_maxima
        peaks = local_maxima(dist)
    peaks &= binary
    # A component whose peak is lower than h (objects thinner than 2h) gets no h-maximum;
    # seed it at its own deepest point so no foreground is left unlabelled.
    has_seed = np.zeros(n + 1, bool)
    has_seed[np.unique(comps[peaks])] = True
    missing = np.nonzero(~has_seed[1:])[0] + 1
    if missing.size:
        # Its deepest pixel, the first in raster order among equal depths: a choice that does
        # not depend on the crop around the component (scipy's maximum_position picks among
        # ties by an unstable sort over the whole array), so that tiled and whole-image
        # extraction agree.
        top = np.zeros(n + 1)
        top[missing] = ndi.maximum(dist, comps, missing)
        want = np.zeros(n + 1, bool)
        want[missing] = True
        flat_c = comps.ravel()
        cand = np.flatnonzero(want[flat_c] & (dist.ravel() == top[flat_c]))
        _, first = np.unique(flat_c[cand], return_index=True)
        peaks.flat[cand[first]] = True
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3), bool))
    labels = watershed(-dist, markers, mask=binary)
    return labels.astype(np.int32)


#: Object extraction in micrometres: the split depth and the smallest object are
#: tissue sizes, so a 20x and a 40x image (or a 20x model's mask and a 40x image's) are cut the
#: same way.  The values are the former pixel defaults (2 px, 20 px) at 40x, 0.25 um/px, so
#: figures on 40x images are unchanged.
SPLIT_UM = 0.5
MIN_AREA_UM2 = 1.25
#: Pixel size assumed for the conversion when neither the image's nor the model's is known.
ASSUMED_MPP = 0.25


def extraction_pixels(mpp: float | None, split_um: float = SPLIT_UM,
                      min_area_um2: float = MIN_AREA_UM2, split_h: float | None = None,
                      min_area: int | None = None) -> tuple[float, int]:
    """Split depth and minimum area in pixels of an image at ``mpp`` um/px.

    Parameters
    ----------
    mpp : float or None
        Pixel size of the mask the objects are cut from; ``None``: :data:`ASSUMED_MPP`.
    split_um, min_area_um2 : float
        Watershed split depth (um) and smallest object (um^2).
    split_h, min_area : optional
        Pixel values that override the micrometre ones (``--split-h`` / ``--min-area``).

    Returns
    -------
    (float, int)
        ``h`` and ``min_area`` for :func:`label_objects`.
    """
    m = float(mpp) if mpp else ASSUMED_MPP
    if not (np.isfinite(m) and m > 0):
        raise ValueError(f"pixel size must be a positive number, got {mpp!r}")
    for name, v in (("split_um", split_um), ("min_area_um2", min_area_um2)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    h = float(split_h) if split_h is not None else split_um / m
    a = int(min_area) if min_area is not None else int(round(min_area_um2 / m ** 2))
    return h, a


def label_objects(prob: np.ndarray, threshold: float = 0.5, h: float = 2.0,
                  min_area: int = 0) -> np.ndarray:
    """Objects of a probability mask.

    Parameters
    ----------
    prob : ndarray, shape (H, W), float
        Probabilities in [0, 1].
    threshold : float
        Foreground is ``prob > threshold``.
    h : float
        Split depth, see :func:`split_touching`.
    min_area : int
        Objects with fewer pixels are removed (after splitting).

    Returns
    -------
    ndarray of int32, shape (H, W)
        Sequential labels 1..N.
    """
    _check_2d("prob", prob)
    if prob.dtype.kind != "f":
        raise TypeError(f"prob must be a float array, got {prob.dtype}")
    if not np.all(np.isfinite(prob)):
        raise ValueError("prob contains NaN or inf")
    labels = split_touching(prob > threshold, h)
    if min_area > 0 and labels.max() > 0:
        area = np.bincount(labels.ravel())
        small = area < min_area
        small[0] = False
        labels[small[labels]] = 0
        from skimage.segmentation import relabel_sequential
        labels = relabel_sequential(labels)[0].astype(np.int32)
    return labels


# ----------------------------------------------------------------------------- table
@dataclass(frozen=True)
class ObjectTable:
    """Per-object measurements (one entry per label 1..N, in label order).

    Attributes
    ----------
    id : ndarray of int64, shape (N,)
        The object's label.
    x, y : ndarray of float64, shape (N,)
        Centroid column and row (pixel centres at integer coordinates).
    area : ndarray of int64, shape (N,)
        Pixel count.
    mean_mask, max_mask : ndarray of float64, shape (N,)
        Mean and maximum probability over the object (NaN without a probability mask).
    mpp : float or None
        Pixel size; if given, the CSV also has ``area_um2``.
    classes : vnumba.analysis.classes.NucleusClasses or None
        Per-object class probabilities and class (same objects, same order), for the
        per-class maps of a multi-class model.
    """

    id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    area: np.ndarray
    mean_mask: np.ndarray
    max_mask: np.ndarray
    mpp: float | None = None
    classes: object = None

    def __len__(self) -> int:
        return int(self.id.size)

    def centroids(self) -> np.ndarray:
        """(N, 2) float64 array of ``(y, x)``."""
        return np.stack([self.y, self.x], axis=1) if len(self) else np.zeros((0, 2))


def object_table(labels: np.ndarray, prob: np.ndarray | None = None,
                 mpp: float | None = None, class_probs: np.ndarray | None = None,
                 class_names=None) -> ObjectTable:
    """Measure every object of a label image.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        0 = background.  Labels need not be sequential; absent labels are skipped.
    prob : ndarray, shape (H, W), optional
        Probability mask for ``mean_mask`` / ``max_mask``.
    mpp : float, optional
        Pixel size in µm/px (adds ``area_um2`` to the CSV).
    class_probs : ndarray, shape (C_m, H, W), optional
        Per-class maps of a multi-class model; with ``class_names`` (C_m names) every object
        gets its class probabilities and class (:func:`vnumba.analysis.classes.classify_nuclei`).
    class_names : sequence of str, optional

    Returns
    -------
    ObjectTable
    """
    _check_2d("labels", labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    if prob is not None:
        _check_2d("prob", prob)
        if prob.shape != labels.shape:
            raise ValueError(f"prob has shape {prob.shape}, labels {labels.shape}")
    flat, area = label_areas(labels)
    n = area.size
    ids = np.nonzero(area[1:])[0] + 1
    rows, cols = np.indices(labels.shape)
    sy = np.bincount(flat, weights=rows.ravel(), minlength=n)
    sx = np.bincount(flat, weights=cols.ravel(), minlength=n)
    a = area[ids].astype(np.float64)
    if prob is not None:
        sp = np.bincount(flat, weights=prob.ravel().astype(np.float64), minlength=n)
        mean_mask = sp[ids] / a
        max_mask = ndi.maximum(prob.astype(np.float64), labels, ids) if ids.size else np.zeros(0)
        max_mask = np.asarray(max_mask, dtype=np.float64)
    else:
        mean_mask = np.full(ids.size, np.nan)
        max_mask = np.full(ids.size, np.nan)
    classes = None
    if class_probs is not None:
        if class_names is None:
            raise ValueError("class_probs given without class_names")
        from vnumba.analysis.classes import classify_nuclei
        classes = classify_nuclei(labels, class_probs, class_names, ids)
    return ObjectTable(id=ids.astype(np.int64), x=sx[ids] / a, y=sy[ids] / a,
                       area=area[ids].astype(np.int64), mean_mask=mean_mask,
                       max_mask=max_mask, mpp=mpp, classes=classes)


def table_to_csv(table: ObjectTable) -> str:
    """CSV text with columns ``id, x, y, area, mean_mask, max_mask`` (+ ``area_um2``), and
    for a classified table ``class, p_<name>...`` (e.g. ``p_tumour, p_immune, p_other``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["id", "x", "y", "area", "mean_mask", "max_mask"]
    if table.mpp is not None:
        cols.append("area_um2")
    cl = table.classes
    if cl is not None:
        cols += ["class"] + [f"p_{n}" for n in cl.names]
        names = cl.labels
    w.writerow(cols)
    for i in range(len(table)):
        row = [int(table.id[i]), f"{table.x[i]:.3f}", f"{table.y[i]:.3f}", int(table.area[i]),
               f"{table.mean_mask[i]:.5f}", f"{table.max_mask[i]:.5f}"]
        if table.mpp is not None:
            row.append(f"{table.area[i] * table.mpp ** 2:.3f}")
        if cl is not None:
            row += [names[i]] + [f"{v:.5f}" for v in cl.probs[i]]
        w.writerow(row)
    return buf.getvalue()


def write_objects_csv(path, table: ObjectTable) -> None:
    """Write :func:`table_to_csv` atomically."""
    from vnumba.io.outputs import atomic_write_text
    atomic_write_text(path, table_to_csv(table))


# ----------------------------------------------------------------------------- polygons
def object_polygons(labels: np.ndarray, ids=None, simplify: float = 0.0) -> dict:
    """Outline of each object as a closed polygon in QuPath/GeoJSON coordinates.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    ids : iterable of int, optional
        Objects to trace (default: all present).
    simplify : float
        Douglas–Peucker tolerance in pixels (0: exact outline).  Vertices on straight
        stretches of the outline are always dropped (that changes nothing); Douglas–Peucker
        is pure Python in scikit-image and costs ~10 ms per object.

    Returns
    -------
    dict
        ``id -> ndarray (K, 2)`` of ``(x, y)`` vertices, first == last, counter-clockwise in
        a y-up frame (positive shoelace area), as RFC 7946 wants for exterior rings.  An
        object split into several pieces is represented by its largest piece.
    """
    from skimage.measure import approximate_polygon, find_contours

    _check_2d("labels", labels)
    if ids is None:
        ids = np.unique(labels)
        ids = ids[ids > 0]
    slices = ndi.find_objects(labels)
    out = {}
    for i in ids:
        i = int(i)
        sl = slices[i - 1] if i - 1 < len(slices) else None
        if sl is None:
            continue
        r0, c0 = sl[0].start, sl[1].start
        crop = np.pad((labels[sl] == i).astype(np.float64), 1)
        contours = find_contours(crop, 0.5)
        if not contours:
            continue
        # Pick the contour enclosing the largest area (holes and stray bits are smaller).
        best = max(contours, key=lambda c: abs(_shoelace(c)))
        best = _drop_collinear(best)
        if simplify > 0:
            best = approximate_polygon(best, tolerance=simplify)
        # crop index k corresponds to image index k - 1 + offset; +0.5 for QuPath's corners.
        xy = np.stack([best[:, 1] + c0 - 1 + 0.5, best[:, 0] + r0 - 1 + 0.5], axis=1)
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        if _shoelace(xy) < 0:
            xy = xy[::-1]
        if len(xy) < 4:
            continue
        out[i] = xy
    return out


def _drop_collinear(c: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed contour (first == last) that lie on a straight line
    between their neighbours."""
    ring = c[:-1] if len(c) > 1 and np.array_equal(c[0], c[-1]) else c
    if len(ring) < 4:
        return c
    prev = np.roll(ring, 1, axis=0)
    nxt = np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - ring[:, 1]) \
        - (ring[:, 1] - prev[:, 1]) * (nxt[:, 0] - ring[:, 0])
    keep = np.abs(cross) > 1e-9
    if keep.sum() < 3:
        return c
    ring = ring[keep]
    return np.vstack([ring, ring[:1]])


def _shoelace(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def objects_to_geojson(labels: np.ndarray, table: ObjectTable, class_name: str = "Nucleus",
                       color=(200, 0, 0), simplify: float = 0.0, id_seed: str = "") -> dict:
    """GeoJSON FeatureCollection of detections that QuPath imports (File > Import objects).

    Each object is a feature with a UUID ``id`` (reproducible: :func:`vnumba.analysis.qupath.feature_id`
    of ``id_seed`` and the label), properties ``objectType: "detection"``,
    ``classification: {"name", "color"}`` and ``measurements`` (the table's columns).  Its
    geometry is the object's pixel-edge-exact outline (:func:`vnumba.analysis.qupath.label_polygons`):
    a ``Polygon`` with its holes as interior rings, or a ``MultiPolygon`` with every piece of
    an object in several pieces; with ``simplify > 0`` the marching-squares outline of
    :func:`object_polygons` (largest piece, no holes) simplified by Douglas–Peucker instead.  A
    classified table (``table.classes``) gives every object the QuPath class and colour of
    its own class (:func:`vnumba.scenarios.mask_class`: tumour -> ``Tumor``, immune ->
    ``Immune cells``, other -> ``Other``) and adds ``p_<name>`` to its measurements;
    ``class_name`` and ``color`` are then unused.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    table : ObjectTable
        From :func:`object_table` on the same labels.
    class_name : str
        QuPath class assigned to every detection.
    color : tuple of 3 int
        Class colour (RGB 0..255).
    simplify : float
        Douglas–Peucker tolerance in pixels (:func:`object_polygons`); 0: exact outlines.
    id_seed : str
        Seed of the feature ids (e.g. the image's name), so that ids differ between images.

    Returns
    -------
    dict
        JSON-serialisable FeatureCollection.
    """
    from vnumba.analysis.qupath import feature_id, geometry_to_geojson, label_polygons, packed_rgb

    rgb = [int(c) for c in color]
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"color must be 3 ints in 0..255, got {color!r}")
    if simplify > 0:
        polys = {i: {"type": "Polygon", "coordinates": [np.round(p, 3).tolist()]}
                 for i, p in object_polygons(labels, table.id, simplify=simplify).items()}
    else:
        polys = {i: geometry_to_geojson(g) for i, g in label_polygons(labels, table.id).items()}
    cl = table.classes
    if cl is not None:
        from vnumba.scenarios import mask_class
        qp = [mask_class(n) for n in cl.names]
    feats = []
    for k in range(len(table)):
        i = int(table.id[k])
        if i not in polys:
            continue
        meas = {"id": i, "x": round(float(table.x[k]), 3), "y": round(float(table.y[k]), 3),
                "area": int(table.area[k])}
        for name in ("mean_mask", "max_mask"):
            v = float(getattr(table, name)[k])
            if np.isfinite(v):
                meas[name] = round(v, 5)
        if table.mpp is not None:
            meas["area_um2"] = round(float(table.area[k]) * table.mpp ** 2, 3)
        name, col = class_name, rgb
        if cl is not None:
            c = qp[int(cl.index[k])]
            name, col = c.qupath_class, [int(v) for v in c.color]
            for n, v in zip(cl.names, cl.probs[k]):
                meas[f"p_{n}"] = round(float(v), 5)
        feats.append({
            "type": "Feature",
            "id": feature_id(id_seed, i),
            "geometry": polys[i],
            "properties": {
                "objectType": "detection",
                "name": f"{name} {i}",
                "classification": {"name": name, "color": col,
                                   # QuPath < 0.4 reads a packed colour instead of a list.
                                   "colorRGB": packed_rgb(col)},
                "measurements": meas,
            },
        })
    return {"type": "FeatureCollection", "features": feats}


def write_objects_geojson(path, labels: np.ndarray, table: ObjectTable, **kwargs) -> None:
    """Write :func:`objects_to_geojson` atomically."""
    from vnumba.io.outputs import atomic_write_text
    atomic_write_text(path, json.dumps(objects_to_geojson(labels, table, **kwargs)))
