"""The tumour microenvironment's look-alikes for scenario 3: geometry and painting.

A model trained on tumour nuclei among a few scattered immune cells learns "dark round blob =
tumour nucleus" and then marks the dense lymphocyte aggregates of real melanoma as tumour.
The functions here draw what fools it, so that the generator can put it in the image and
leave it out of the target mask:

* :func:`rotate_patch` — rotation and scaling of a premultiplied RGBA nucleus patch (shared
  with the tumour nuclei of :mod:`synth.scenario3`);
* :func:`grow_region` — a blob-like region grown by fast marching from a seed over a random
  velocity field (lymphocyte aggregates, melanophage groups);
* :func:`paste_patches` — real nucleus patches (immune, fibroblast / endothelial, tumour) pasted
  at sampled centres with rotation, scale, mirror and stain-density jitter, *with bounded
  overlap* (a lymphocyte aggregate is tightly packed and its nuclei overlap; tumour nuclei use
  the non-overlapping :func:`synth.scenario3.place_nuclei`);
* :func:`pack_ellipses` — ellipses at candidate centres with the same overlap bounds
  (infiltrating lymphocytes drawn as textured ellipses);
* :func:`oriented_ellipses` — elongated nuclei whose axes follow a smooth direction field
  (fibroblasts in stroma) or a given direction (endothelium along a vessel wall);
* :func:`discs` — packed discs (red blood cells in a vessel lumen);
* :func:`granules` — granular blobs (melanin pigment, necrotic debris).

Every function takes the ``numpy.random.Generator`` as its only source of randomness and works
in pixels of the script's pixel size.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .fmm import travel_time
from .noise import gaussian_random_field

__all__ = ["rotate_patch", "ellipse_box", "grow_region", "density_jitter", "paste_patches",
           "pack_ellipses", "fit_ellipse", "oriented_ellipses", "discs", "granules", "smooth_angle_field"]


def ellipse_box(cy, cx, a, b, th, H, W):
    """Pixels (centre rule) of an ellipse clipped to an (H, W) image.

    Returns
    -------
    None, or (y0, x0, mask)
        ``mask`` bool of the bounding box starting at ``(y0, x0)``.
    """
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


def grow_region(rng: np.random.Generator, shape, seed, radius: float, speed) -> np.ndarray:
    """Pixels reached from ``seed`` within travel time ``radius`` (bool (H, W)).

    With unit speed this is a disc of ``radius``; a random velocity field (``speed``, (H, W)
    > 0) makes it an irregular blob like a lymphocyte aggregate.  ``rng`` is unused (kept for a
    uniform signature with the other drawing functions).
    """
    H, W = (int(v) for v in shape)
    src = np.zeros((H, W), bool)
    y, x = int(np.clip(seed[0], 0, H - 1)), int(np.clip(seed[1], 0, W - 1))
    src[y, x] = True
    return travel_time(src, speed, max_time=float(radius)) <= radius


def density_jitter(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Scale the optical density of colours ``rgb`` (values in [0, 1]) by ``factor``.

    Beer–Lambert: a stain ``factor`` times as dense transmits ``I = exp(factor * log I)``, so
    a nucleus stained more or less strongly keeps its hue and chromatin pattern.
    """
    x = np.clip(rgb, 1.0 / 255.0, 1.0)
    return np.exp(np.float32(factor) * np.log(x)).astype(np.float32)


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


@njit(cache=True)
def _bilinear_kernel(src, k0, k1, inv, off, out):  # pragma: no cover - compiled
    """Channels ``k0 .. k1-1`` of uint8 ``src`` (h, w, C) warped into float32 ``out`` (H, W, n).

    The arithmetic of ``scipy.ndimage.affine_transform(order=1, mode="constant", cval=0)``
    step for step (scipy/ndimage/src/ni_interpolation.c, ni_splines.c), so that the result is
    the same bits: the input coordinate is ``off + i * inv[:, 0] + j * inv[:, 1]`` summed in
    that order; a point outside ``[0, n - 1]`` on either axis is 0; the weights are
    ``1 - x`` and ``1 - (1 - x)``; the four products ``(v * wy) * wx`` are added in row-major
    order in float64 and the sum is rounded to float32, then scaled by float32 1/255.
    """
    h, w = src.shape[0], src.shape[1]
    H, W = out.shape[0], out.shape[1]
    scale = np.float32(1.0 / 255.0)
    for i in range(H):
        for j in range(W):
            cy = off[0]
            cy += i * inv[0, 0]
            cy += j * inv[0, 1]
            cx = off[1]
            cx += i * inv[1, 0]
            cx += j * inv[1, 1]
            if cy < 0.0 or cy > h - 1 or cx < 0.0 or cx > w - 1:
                for k in range(k0, k1):
                    out[i, j, k - k0] = 0.0
                continue
            fy = np.floor(cy)
            fx = np.floor(cx)
            y0 = int(fy)
            x0 = int(fx)
            wy0 = 1.0 - (cy - fy)
            wy1 = 1.0 - wy0
            wx0 = 1.0 - (cx - fx)
            wx1 = 1.0 - wx0
            # At the last row or column scipy's second neighbour is the mirrored one, with
            # weight exactly 0; its product adds +0.0, so any in-range index gives the same sum.
            y1 = y0 + 1 if y0 + 1 < h else y0
            x1 = x0 + 1 if x0 + 1 < w else x0
            for k in range(k0, k1):
                t = 0.0
                t += (float(src[y0, x0, k]) * wy0) * wx0
                t += (float(src[y0, x1, k]) * wy0) * wx1
                t += (float(src[y1, x0, k]) * wy1) * wx0
                t += (float(src[y1, x1, k]) * wy1) * wx1
                out[i, j, k - k0] = np.float32(t) * scale


def _warp(src: np.ndarray, channels, rot, origin=(0, 0), shape=None) -> np.ndarray:
    """Bilinear warp of uint8 ``src[..., channels]`` (a range) to float32 in [0, 1].

    Parameters
    ----------
    src : ndarray uint8 (h, w, C)
    channels : (int, int)
        First and one-past-last channel.
    rot : tuple
        :func:`_rotation`'s inverse matrix, offset and full output shape.
    origin : (int, int)
        Top-left of the output window in the full output.
    shape : (int, int), optional
        Window shape (default: the full output).

    Returns
    -------
    ndarray float32 (H, W, k1 - k0)

    Notes
    -----
    Equal bit for bit to ``ndimage.affine_transform`` of each channel as float32 with
    ``order=1, mode="constant"`` scaled by float32 1/255 (``tests/naive.py::warp_channels``).
    One compiled call for all channels replaces one scipy call per channel, whose fixed
    Python overhead was most of the cost for these small patches (bench/bench_scenario3.py).
    """
    inv, offset, full = rot
    shape = full if shape is None else shape
    off = offset + inv @ np.asarray(origin, np.float64)
    k0, k1 = channels
    out = np.empty((int(shape[0]), int(shape[1]), k1 - k0), np.float32)
    _bilinear_kernel(src, k0, k1, np.ascontiguousarray(inv, np.float64),
                     np.ascontiguousarray(off, np.float64), out)
    return out


def _rotated_alpha(a: np.ndarray, rot):
    """Interpolated alpha (H2, W2) and the tight box of its >= 1/2 part (or None)."""
    al = _warp(a, (3, 4), rot)[..., 0]
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
    ck = _warp(a, (0, 3), rot, origin, alb.shape)
    rgb = np.zeros(alb.shape + (3,), np.float32)
    np.divide(ck, alb[..., None], out=rgb, where=inside[..., None])
    np.clip(rgb, 0.0, 1.0, out=rgb)
    return rgb


def _rotated(src, angle, sc, flip):
    if flip:
        src = src[:, ::-1]
    rot = _rotation(src.shape[0], src.shape[1], angle, sc)
    al_f, box = _rotated_alpha(src, rot)
    if box is None:
        return None
    col = _rotated_rgb(src, rot, al_f, box)
    al = al_f[box] >= 0.5
    return al, col


def paste_patches(rng: np.random.Generator, shape, patches, centres, *, max_overlap: float = 0.3,
                  scale=(1.0, 1.0), base_scale: float = 1.0, flip: bool = True,
                  density=(1.0, 1.0), region=None, labels=None, rgb=None, id_offset: int = 0,
                  max_count: int | None = None, avoid=None, max_avoid: float = 0.0,
                  min_distance: float = 0.0):
    """Paste real nucleus patches at candidate centres with bounded overlap.

    Candidates are tried in the order given.  A candidate draws a patch, a uniform rotation,
    a scale uniform in ``scale`` (times ``base_scale``), a mirror (``flip``) and a stain
    density factor uniform in ``density`` (:func:`density_jitter`); it is accepted when at
    most ``max_overlap`` of its pixels are already covered (by this call or the ``labels``
    passed in) and, with ``region``, its centre lies in ``region``, and, with
    ``min_distance``, its centre is at least that far from every centre accepted before in
    this call (checked before anything is drawn for it).  Accepted nuclei are painted over
    earlier ones (moderate overlap, as in packed lymphocyte aggregates).

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (H, W)
    patches : sequence of ndarray uint8 (h, w, 4)
        Premultiplied RGBA patches (reference bundle).
    centres : ndarray (n, 2) float
        Candidate centres (row, col).
    max_overlap : float in [0, 1]
    scale, density : (float, float)
    base_scale : float
        Pixel-size factor of the bundle (bundle mpp / script mpp).
    flip : bool
    region : ndarray bool (H, W), optional
    labels : ndarray int32 (H, W), optional
        Existing nuclei to paint over (modified in place), ids ``<= id_offset``.
    rgb : ndarray float32 (H, W, 3), optional
        Their colours (modified in place).
    id_offset : int
        First new id is ``id_offset + 1``.
    max_count : int, optional
        Stop after this many accepted nuclei.
    avoid : ndarray bool (H, W), optional
        Pixels of other objects (e.g. tumour nuclei) a candidate may cover only a little: it
        is rejected when more than ``max_avoid`` of its pixels lie on them, so that it sits
        beside them (touching or slightly overlapping) instead of over them.
    max_avoid : float in [0, 1]
    min_distance : float
        Smallest centre distance (px) between two nuclei of this call: a hard core, so that
        packed nuclei keep the spacing of real aggregates (random sequential placement
        without it leaves close pairs beside holes).  0: no constraint.

    Returns
    -------
    labels : ndarray int32 (H, W)
    rgb : ndarray float32 (H, W, 3)
    accepted : ndarray float64 (m, 2)
        Centres of the pasted nuclei (ids ``id_offset + 1 .. id_offset + m``).
    """
    H, W = (int(v) for v in shape)
    if labels is None:
        labels = np.zeros((H, W), np.int32)
    if rgb is None:
        rgb = np.zeros((H, W, 3), np.float32)
    cen = np.asarray(centres, np.float64).reshape(-1, 2)
    if len(patches) == 0 or cen.shape[0] == 0:
        return labels, rgb, np.zeros((0, 2))
    out = []
    d2 = float(min_distance) ** 2
    acc = np.empty((cen.shape[0], 2)) if d2 > 0 else None
    for cy, cx in cen:
        if max_count is not None and len(out) >= max_count:
            break
        iy, ix = int(cy), int(cx)
        if not (0 <= iy < H and 0 <= ix < W):
            continue
        if region is not None and not region[iy, ix]:
            continue
        if acc is not None and out:
            a = acc[:len(out)]
            if np.min((a[:, 0] - cy) ** 2 + (a[:, 1] - cx) ** 2) < d2:
                continue
        src = patches[int(rng.integers(len(patches)))]
        sc = base_scale * float(rng.uniform(scale[0], scale[1]))
        r = _rotated(src, float(rng.uniform(0.0, 360.0)), sc, flip and bool(rng.integers(2)))
        f = float(rng.uniform(density[0], density[1]))
        if r is None:
            continue
        al, col = r
        h, w = al.shape
        r0, c0 = int(round(cy - h / 2.0)), int(round(cx - w / 2.0))
        y0, x0, y1, x1 = max(r0, 0), max(c0, 0), min(r0 + h, H), min(c0 + w, W)
        if y0 >= y1 or x0 >= x1:
            continue
        sub = al[y0 - r0:y1 - r0, x0 - c0:x1 - c0]
        area = int(al.sum())
        if area == 0 or np.count_nonzero(labels[y0:y1, x0:x1][sub]) > max_overlap * area:
            continue
        if avoid is not None and np.count_nonzero(avoid[y0:y1, x0:x1][sub]) > max_avoid * area:
            continue
        nid = id_offset + len(out) + 1
        labels[y0:y1, x0:x1][sub] = nid
        c = col[y0 - r0:y1 - r0, x0 - c0:x1 - c0][sub]
        rgb[y0:y1, x0:x1][sub] = density_jitter(c, f) if f != 1.0 else c
        if acc is not None:
            acc[len(out)] = cy, cx
        out.append((cy, cx))
    return labels, rgb, np.asarray(out, np.float64).reshape(-1, 2)


def oriented_ellipses(rng: np.random.Generator, shape, centres, semi_axis, axis_ratio,
                      angle=None, angle_jitter: float = 0.3, region=None):
    """Elongated ellipses (fibroblast / endothelial nuclei) at ``centres``.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (H, W)
    centres : ndarray (n, 2)
    semi_axis, axis_ratio : (float, float)
        Long semi-axis ``a`` uniform in ``semi_axis``; short one ``a * r``.
    angle : ndarray (H, W) or float, optional
        Direction of the long axis (radians) at each pixel, e.g. a smooth random field so that
        neighbouring fibroblasts lie parallel as in collagen bundles; uniform when None.
    angle_jitter : float
        Standard deviation (radians) added to ``angle``.
    region : ndarray bool (H, W), optional
        Centres outside it are dropped; nucleus pixels are clipped to it.

    Returns
    -------
    labels : ndarray int32 (H, W)
        Ids ``1..m`` (later ones paint over earlier ones).
    params : ndarray float64 (m, 5)
        ``[cy, cx, a, b, theta]``.
    """
    H, W = (int(v) for v in shape)
    labels = np.zeros((H, W), np.int32)
    params = []
    for cy, cx in np.asarray(centres, np.float64).reshape(-1, 2):
        iy, ix = int(cy), int(cx)
        if not (0 <= iy < H and 0 <= ix < W) or (region is not None and not region[iy, ix]):
            continue
        a = float(rng.uniform(*semi_axis))
        b = a * float(rng.uniform(*axis_ratio))
        if angle is None:
            th = float(rng.uniform(0.0, np.pi))
        else:
            base = float(angle[iy, ix]) if np.ndim(angle) == 2 else float(angle)
            th = base + angle_jitter * float(rng.standard_normal())
        box = ellipse_box(cy, cx, a, b, th, H, W)
        if box is None:
            continue
        y0, x0, m = box
        if region is not None:
            m = m & region[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        if not m.any():
            continue
        labels[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = len(params) + 1
        params.append((cy, cx, a, b, th))
    return labels, np.asarray(params, np.float64).reshape(-1, 5)


def pack_ellipses(rng: np.random.Generator, shape, centres, semi_axis, axis_ratio, *,
                  labels=None, max_overlap: float = 0.3, avoid=None, max_avoid: float = 0.0,
                  id_offset: int = 0, max_count: int | None = None):
    """Ellipses at candidate centres with bounded overlap (the ellipse counterpart of
    :func:`paste_patches`).

    Candidates are tried in order; each draws ``a`` uniform in ``semi_axis``, ``b = a * r``
    with ``r`` uniform in ``axis_ratio`` and a uniform inclination, and is accepted when at most
    ``max_overlap`` of its pixels are already labelled and at most ``max_avoid`` lie on
    ``avoid``.

    Returns
    -------
    labels : ndarray int32 (H, W)
        New ids ``id_offset + 1 ..`` painted over earlier ones.
    params : ndarray float64 (m, 5)
        ``[cy, cx, a, b, theta]`` of the accepted ellipses.
    """
    H, W = (int(v) for v in shape)
    if labels is None:
        labels = np.zeros((H, W), np.int32)
    params = []
    for cy, cx in np.asarray(centres, np.float64).reshape(-1, 2):
        if max_count is not None and len(params) >= max_count:
            break
        fit = fit_ellipse(rng, cy, cx, semi_axis, axis_ratio, labels, max_overlap, avoid, max_avoid)
        if fit is None:
            continue
        sl, m, p = fit
        labels[sl][m] = id_offset + len(params) + 1
        params.append(p)
    return labels, np.asarray(params, np.float64).reshape(-1, 5)


def fit_ellipse(rng: np.random.Generator, cy, cx, semi_axis, axis_ratio, labels, max_overlap: float,
                avoid=None, max_avoid: float = 0.0):
    """One candidate ellipse centred at ``(cy, cx)``: the step of :func:`pack_ellipses` and
    :func:`synth.scenario3.place_immune_cells`.

    Draws ``a`` uniform in ``semi_axis``, ``b = a * r`` with ``r`` uniform in ``axis_ratio`` and
    a uniform inclination (always, so that the random stream does not depend on the outcome).

    Returns
    -------
    tuple or None
        ``(slices, mask, (cy, cx, a, b, theta))`` of an ellipse centred on the image that covers
        a pixel, at most ``max_overlap`` of them already labelled (non-zero in ``labels``) and at
        most ``max_avoid`` on ``avoid``; None otherwise.
    """
    H, W = labels.shape
    a = float(rng.uniform(*semi_axis))
    b = a * float(rng.uniform(*axis_ratio))
    th = float(rng.uniform(0.0, np.pi))
    if not (0 <= cy < H and 0 <= cx < W):
        return None
    box = ellipse_box(cy, cx, a, b, th, H, W)
    if box is None:
        return None
    y0, x0, m = box
    area = int(m.sum())
    sl = (slice(y0, y0 + m.shape[0]), slice(x0, x0 + m.shape[1]))
    if area == 0 or np.count_nonzero(labels[sl][m]) > max_overlap * area:
        return None
    if avoid is not None and np.count_nonzero(avoid[sl][m]) > max_avoid * area:
        return None
    return sl, m, (cy, cx, a, b, th)


def discs(rng: np.random.Generator, region: np.ndarray, fill: float, radius, axis_ratio=(0.8, 1.0),
          max_overlap: float = 0.5, tries: int = 20):
    """Ellipses packed into ``region`` until about ``fill`` of it is covered (red blood cells).

    Returns
    -------
    labels : ndarray int32 (H, W)
        Ids ``1..m``, clipped to ``region``.
    """
    region = np.asarray(region, bool)
    H, W = region.shape
    labels = np.zeros((H, W), np.int32)
    area = int(region.sum())
    if area == 0 or fill <= 0:
        return labels
    ys, xs = np.nonzero(region)
    covered, n = 0, 0
    r_mean = 0.5 * (radius[0] + radius[1])
    budget = int(tries * max(1, fill * area / (np.pi * r_mean ** 2)))
    for _ in range(budget):
        if covered >= fill * area:
            break
        k = int(rng.integers(ys.size))
        cy, cx = ys[k] + rng.uniform(), xs[k] + rng.uniform()
        a = float(rng.uniform(*radius))
        b = a * float(rng.uniform(*axis_ratio))
        box = ellipse_box(cy, cx, a, b, float(rng.uniform(0, np.pi)), H, W)
        if box is None:
            continue
        y0, x0, m = box
        m = m & region[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        s = int(m.sum())
        win = labels[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        if s == 0 or np.count_nonzero(win[m]) > max_overlap * s:
            continue
        covered += s - np.count_nonzero(win[m])
        n += 1
        win[m] = n
    return labels


def granules(rng: np.random.Generator, shape, centres, radius, density=(0.4, 0.7),
             grain: float = 1.0) -> np.ndarray:
    """Granular blobs: discs of radius uniform in ``radius`` in which a fraction uniform in
    ``density`` of the pixels is set, chosen by thresholding a correlated random field of
    correlation ``grain`` px (melanin granules, nuclear debris).

    Returns
    -------
    ndarray bool (H, W)
    """
    H, W = (int(v) for v in shape)
    out = np.zeros((H, W), bool)
    cen = np.asarray(centres, np.float64).reshape(-1, 2)
    if cen.shape[0] == 0:
        return out
    z = gaussian_random_field(rng, (H, W), grain, dtype=np.float32)
    for cy, cx in cen:
        r = float(rng.uniform(*radius))
        box = ellipse_box(cy, cx, r, r * float(rng.uniform(0.6, 1.0)),
                          float(rng.uniform(0, np.pi)), H, W)
        if box is None:
            continue
        y0, x0, m = box
        zz = z[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        d = float(rng.uniform(*density))
        thr = np.quantile(zz[m], 1.0 - d) if m.any() else 0.0
        out[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] |= m & (zz >= thr)
    return out


def smooth_angle_field(rng: np.random.Generator, shape, corr: float) -> np.ndarray:
    """A smooth random direction field (radians, (H, W)): the angle of a 2-vector field whose
    components are Gaussian random fields of correlation ``corr`` px."""
    u = gaussian_random_field(rng, shape, corr, channels=2, dtype=np.float64)
    return 0.5 * np.arctan2(u[1], u[0])  # half angle: an axis, not an arrow
