"""Colour statistics of object categories from annotated real H&E images (``synth stats``).

Every image (``NAME.png`` with ``NAME_labels.npz`` holding ``instances`` and ``classes``, the
format of ``shared/data/real/README.md``) is

1. Reinhard-normalised (:func:`synth.color.reinhard_normalize`) to the target Lab mean/std
   (the script's ``[normalization]``, or the statistics of ``--reference IMAGE``);
2. rescaled from its pixel size (``--image-mpp``) to the script's (``[scenario].mpp``), the
   image with anti-aliasing, the labels by nearest neighbour;
3. split into categories by these rules (distances at the script's scale, in micrometres):

   * ``tumour_nucleus``: pixels of class-1 (tumour) nuclei, eroded by one pixel;
   * ``immune``: pixels of class-2 (immune) nuclei, eroded by one pixel (lymphocytes are
     almost all nucleus at this scale);
   * ``tumour``: cytoplasm, pixels 1-5 um from a tumour nucleus and > 1 um from any other
     nucleus; each such pixel belongs to its nearest tumour nucleus (one object per cell);
   * ``connective`` and ``background``: pixels > 4 um from every nucleus; the 25 % with the
     highest Lab a* (most eosin-pink) are connective tissue, the rest background; objects are
     16 um square tiles;

4. summarised per category as a :class:`synth.color.ColorSpec`: ``mean`` = mean of the object
   means, ``cov_between`` = covariance of the object means, ``cov`` = pooled covariance of
   the pixels around their object mean, ``corr`` = correlation length fitted to the
   horizontal autocorrelation of those deviations at lags 1-3 px
   (:func:`fit_correlation_length`, the model of Gaussian-smoothed white noise).

The result replaces the block between ``# >>> synth stats`` and ``# <<< synth stats`` of the
script; a script without that block gets it appended, and the tables the block declares
(``[normalization]``, ``[colors.*]``) are taken out of the rest of the script first (TOML
declares a table once).  The new script is validated before it is written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .color import lab_stats, reinhard_normalize, rgb_to_lab
from .script import parse_script_text

__all__ = ["CATEGORIES", "CategoryStats", "load_annotated", "category_objects", "estimate",
           "format_block", "replace_block", "fit_correlation_length", "nucleus_sizes",
           "annotated_images", "update_script"]

BEGIN = "# >>> synth stats"
END = "# <<< synth stats"

#: Categories estimated from H&E images (see the module docstring for the rules).
CATEGORIES = ("background", "connective", "tumour", "tumour_nucleus", "immune")


@dataclass
class CategoryStats:
    """Statistics of one category (colour values RGB in [0, 1])."""

    mean: np.ndarray
    cov: np.ndarray
    cov_between: np.ndarray
    corr: float
    n_objects: int
    n_pixels: int


def load_annotated(png) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``NAME.png`` and ``NAME_labels.npz``.

    Returns
    -------
    img : ndarray (H, W, 3) float64 in [0, 1]
    instances : ndarray (H, W) int32
    classes : ndarray (H, W) uint8

    Raises
    ------
    ValueError
        Missing/malformed label file or mismatched shapes (message names the file).
    """
    from vnumba.io.images import read_image
    from vnumba.io.labels import read_labels

    png = Path(png)
    lab_path = png.with_name(png.stem + "_labels.npz")
    img = read_image(png).array  # size checked before decoding (vnumba.io.images)
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
        raise ValueError(f"{png}: expected an RGB uint8 image, got {img.dtype} {img.shape}")
    if not lab_path.exists():
        raise ValueError(f"{png}: label file {lab_path.name} not found beside it")
    inst, cls = read_labels(lab_path, shape=img.shape[:2], require_classes=True)
    return img[..., :3].astype(np.float64) / 255.0, inst, cls


def _rescale(img, inst, cls, factor):
    if abs(factor - 1.0) < 1e-6:
        return img, inst, cls
    from skimage.transform import resize

    h, w = img.shape[:2]
    shape = (max(1, int(round(h * factor))), max(1, int(round(w * factor))))
    img = resize(img, shape + (3,), order=1, anti_aliasing=factor < 1, preserve_range=True)
    inst = resize(inst, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    cls = resize(cls, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.uint8)
    return img, inst, cls


def category_objects(img, inst, cls, mpp: float) -> dict[str, np.ndarray]:
    """Object label images (0 = not in the category) of every category (module docstring).

    Parameters
    ----------
    img : ndarray (H, W, 3) float in [0, 1] (normalised, at the script's scale)
    inst, cls : ndarray (H, W)
    mpp : float
        Micrometres per pixel of the arrays.

    Returns
    -------
    dict of str -> ndarray (H, W) int32
    """
    def um(x):
        return x / mpp

    H, W = inst.shape
    nuc = inst > 0
    out = {}
    er = ndimage.binary_erosion(nuc, iterations=1)
    # erosion inside each instance: a pixel stays if its 4-neighbours have the same id
    same = np.ones_like(nuc)
    p = np.pad(inst, 1, mode="edge")
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same &= p[dy:dy + H, dx:dx + W] == inst
    core = nuc & same & er
    out["tumour_nucleus"] = np.where(core & (cls == 1), inst, 0).astype(np.int32)
    out["immune"] = np.where(core & (cls == 2), inst, 0).astype(np.int32)

    d_any = ndimage.distance_transform_edt(~nuc)
    tum = nuc & (cls == 1)
    if tum.any():
        d_t, (iy, ix) = ndimage.distance_transform_edt(~tum, return_indices=True)
        other = nuc & ~tum
        d_o = ndimage.distance_transform_edt(~other) if other.any() else np.full((H, W), np.inf)
        ring = (d_t > um(1.0)) & (d_t <= um(5.0)) & (d_o > um(1.0)) & ~nuc
        out["tumour"] = np.where(ring, inst[iy, ix], 0).astype(np.int32)
    else:
        out["tumour"] = np.zeros((H, W), np.int32)

    far = d_any > um(4.0)
    tile = max(2, int(round(um(16.0))))
    ty, tx = np.mgrid[:H, :W]
    tiles = (ty // tile) * ((W + tile - 1) // tile) + tx // tile + 1
    if far.any():
        a = rgb_to_lab(img)[..., 1]
        thr = np.percentile(a[far], 75)
        conn = far & (a > thr)
        out["connective"] = np.where(conn, tiles, 0).astype(np.int32)
        out["background"] = np.where(far & ~conn, tiles, 0).astype(np.int32)
    else:
        out["connective"] = out["background"] = np.zeros((H, W), np.int32)
    return out


_LAGS = (1, 2, 3)


def fit_correlation_length(rho) -> float:
    """Gaussian correlation length from autocorrelations at lags 1, 2, 3 pixels.

    Fits ``rho(d) = exp(-d**2 / (4 corr**2))`` (Gaussian-smoothed white noise) by least
    squares on ``-log rho`` over the lags with ``0.05 < rho < 1``; 0 when none qualifies.
    """
    rho = np.asarray(rho, dtype=np.float64)
    d2 = np.asarray(_LAGS[: len(rho)], dtype=np.float64) ** 2
    ok = (rho > 0.05) & (rho < 1.0)
    if not ok.any():
        return 0.0
    y = -np.log(rho[ok])
    k = float(np.sum(d2[ok] * y) / np.sum(d2[ok] ** 2))
    return float(np.sqrt(1.0 / (4.0 * k))) if k > 0 else 0.0


class _Acc:
    """Accumulates object means, pooled deviations and lag-1 products over images."""

    def __init__(self):
        self.means, self.sizes = [], []
        self.dev = np.zeros((3, 3))
        self.npx = 0
        self.lag = np.zeros(len(_LAGS))
        self.lag0 = np.zeros(len(_LAGS))

    def add(self, img, labels, min_pixels=4):
        ids, inv, cnt = np.unique(labels.ravel(), return_inverse=True, return_counts=True)
        px = img.reshape(-1, 3)
        sums = np.zeros((len(ids), 3))
        np.add.at(sums, inv, px)
        mu = sums / cnt[:, None]
        keep = (ids > 0) & (cnt >= min_pixels)
        self.means += list(mu[keep])
        self.sizes += list(cnt[keep])
        ok = keep[inv]
        d = px - mu[inv]
        d[~ok] = 0.0
        self.dev += d[ok].T @ d[ok]
        self.npx += int(ok.sum())
        D = d.reshape(img.shape)
        L = labels
        okr = ok.reshape(L.shape)
        for k, lag in enumerate(_LAGS):
            pair = (L[:, lag:] == L[:, :-lag]) & okr[:, lag:]
            self.lag[k] += float(np.sum(D[:, lag:][pair] * D[:, :-lag][pair]))
            self.lag0[k] += float(np.sum(D[:, lag:][pair] ** 2))

    def result(self) -> CategoryStats | None:
        if len(self.means) < 2 or self.npx < 10:
            return None
        M = np.array(self.means)
        cov_b = np.cov(M.T)
        cov = self.dev / max(1, self.npx - len(self.means))
        corr = fit_correlation_length(np.where(self.lag0 > 0, self.lag / np.maximum(self.lag0, 1e-300), 0.0))
        return CategoryStats(M.mean(axis=0), cov, cov_b, min(corr, 50.0), len(M), self.npx)


def estimate(images, *, target_mean, target_std, image_mpp: float, mpp: float):
    """Colour statistics of :data:`CATEGORIES` over annotated images.

    Parameters
    ----------
    images : sequence of path
        ``NAME.png`` files with ``NAME_labels.npz`` beside them.
    target_mean, target_std : array_like (3,)
        Reinhard target (Lab).
    image_mpp, mpp : float
        Pixel size of the images and of the script.

    Returns
    -------
    dict of str -> CategoryStats (categories without enough data are omitted)
    """
    accs = {c: _Acc() for c in CATEGORIES}
    for p in images:
        img, inst, cls = load_annotated(p)
        img = reinhard_normalize(img, target_mean, target_std)
        img, inst, cls = _rescale(img, inst, cls, image_mpp / mpp)
        for cat, lab in category_objects(img, inst, cls, mpp).items():
            accs[cat].add(img, lab)
    return {c: r for c, a in accs.items() if (r := a.result()) is not None}


def nucleus_sizes(images, *, image_mpp: float, mpp: float) -> dict[int, np.ndarray]:
    """Semi-axes (major, minor) in pixels at ``mpp`` of the complete nuclei (not touching the
    border) by class: dict class -> ndarray (n, 2)."""
    from skimage.measure import regionprops

    out: dict[int, list] = {}
    f = image_mpp / mpp
    for p in images:
        _, inst, cls = load_annotated(p)
        H, W = inst.shape
        for r in regionprops(inst):
            y0, x0, y1, x1 = r.bbox
            if y0 == 0 or x0 == 0 or y1 == H or x1 == W:
                continue
            c = int(np.bincount(cls[r.slice][r.image]).argmax())
            out.setdefault(c, []).append((r.axis_major_length / 2 * f, r.axis_minor_length / 2 * f))
    return {c: np.array(v) for c, v in out.items()}


def _short_name(p) -> str:
    """``FOLDER/NAME`` of a path (``NAME`` when it has no folder), as the block records it."""
    p = Path(os.path.abspath(p))   # "." and ".." taken out, links not followed
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _fmt_vec(v, nd=4):
    return "[" + ", ".join(f"{x:.{nd}f}" for x in v) + "]"


def _fmt_mat(m):
    return "[" + ", ".join(_fmt_vec(r, 6) for r in np.asarray(m)) + "]"


def format_block(stats: dict, *, images, target_mean, target_std, reference: str,
                 image_mpp: float, mpp: float) -> str:
    """TOML text of the generated block: ``[normalization]`` and one ``[colors.*]`` table per
    category."""
    names = ", ".join(_short_name(p) for p in images)
    lines = [BEGIN + " (generated block; `python -m synth stats` rewrites it)",
             f"# Estimated from {names} (at {image_mpp} um/px, rescaled to {mpp} um/px) after",
             "# Reinhard normalisation to the target below; category rules: synth/stats.py.",
             "[normalization]",
             'method = "reinhard"',
             f"target_mean = {_fmt_vec(target_mean)}",
             f"target_std = {_fmt_vec(target_std)}",
             f'reference = "{reference}"',
             ""]
    for c in CATEGORIES:
        if c not in stats:
            continue
        s = stats[c]
        lines += [f"[colors.{c}]",
                  f"mean = {_fmt_vec(np.clip(s.mean, 0, 1))}",
                  f"cov = {_fmt_mat(s.cov)}",
                  f"cov_between = {_fmt_mat(s.cov_between)}",
                  f"corr = {s.corr:.3f}",
                  f'source = "synth stats: {s.n_objects} objects, {s.n_pixels} px from {names}"',
                  ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


#: A table header ``[a.b]`` or ``[[a.b]]`` at the start of a line (bare keys; an array row
#: such as ``[0.1, 0.2]`` inside a value is not one).
_HEADER = re.compile(r"^(\[\[?)\s*([A-Za-z_][\w-]*(?:\s*\.\s*[A-Za-z_][\w-]*)*)\s*\]\]?\s*(#.*)?$")


def _table_names(block: str) -> set:
    """Names of the ``[table]`` headers of a TOML text."""
    return {m.group(2).replace(" ", "") for line in block.splitlines()
            if (m := _HEADER.match(line)) and m.group(1) == "["}


def _drop_tables(text: str, names: set) -> str:
    """``text`` without the tables named in ``names`` (and their sub-tables): each from its
    header to the next header, leaving the comment lines directly above that next header
    (they describe it)."""
    lines = text.splitlines(keepends=True)
    heads = [(i, m) for i, line in enumerate(lines) if (m := _HEADER.match(line.rstrip("\r\n")))]
    drop = set()
    for k, (i, m) in enumerate(heads):
        name = m.group(2).replace(" ", "")
        if not any(name == n or name.startswith(n + ".") for n in names):
            continue
        j = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        while j - 1 > i and lines[j - 1].lstrip().startswith("#"):
            j -= 1   # comments above the next table belong to it
        drop.update(range(i, j))
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def replace_block(text: str, block: str) -> str:
    """Replace the generated block of a script text, or append it to a script without one
    (taking out the script's own tables of the same names, e.g. ``[normalization]``)."""
    a = text.find(BEGIN)
    b = text.find(END)
    if a >= 0 and b > a:
        end = text.find("\n", b)
        end = len(text) if end < 0 else end + 1
        return text[:a] + block + text[end:]
    text = _drop_tables(text, _table_names(block))
    return text.rstrip("\n") + "\n\n" + block


def annotated_images(paths) -> list[Path]:
    """The annotated images among ``paths``: files as given, folders' ``NAME.png`` that have
    ``NAME_labels.npz`` beside them (sorted).

    Raises
    ------
    ValueError
        When there is none.
    """
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.glob("*.png") if q.with_name(q.stem + "_labels.npz").exists())
        else:
            out.append(p)
    if not out:
        raise ValueError("no annotated images found")
    return out


def update_script(script, images, *, image_mpp: float, reference=None, name=None):
    """A scenario script with its ``synth stats`` block estimated from annotated images.

    Parameters
    ----------
    script : synth.script.Script
    images : list of path
        Annotated H&E images (:func:`annotated_images`).
    image_mpp : float
        Micrometres per pixel of the images.
    reference : path, optional
        Reference image of the Reinhard normalisation (default: the script's
        ``[normalization]`` target, which must then be ``reinhard``).
    name : path, optional
        What the new text is called in a parse error (e.g. the output file).

    Returns
    -------
    text : str
        The script's text with the block replaced (parsed once: never an invalid script).
    stats : dict of CategoryStats
    sizes : dict of int to ndarray (n, 2)
        :func:`nucleus_sizes`.
    """
    if not image_mpp > 0:
        raise ValueError(f"image pixel size must be > 0, got {image_mpp}")
    if reference is not None:
        reference = Path(reference)
        ref_img, _, _ = load_annotated(reference) if reference.with_name(
            reference.stem + "_labels.npz").exists() else (None, None, None)
        if ref_img is None:
            import imageio.v3 as iio
            ref_img = iio.imread(reference)[..., :3]
        tm, ts = lab_stats(ref_img)
        ref_name = _short_name(reference)
    else:
        n = script.normalization
        if n.method != "reinhard":
            raise ValueError(f"{script.path}: [normalization] is not 'reinhard'; give --reference")
        tm, ts, ref_name = np.array(n.target_mean), np.array(n.target_std), n.reference
    stats = estimate(images, target_mean=tm, target_std=ts, image_mpp=image_mpp, mpp=script.mpp)
    block = format_block(stats, images=images, target_mean=tm, target_std=ts, reference=ref_name,
                         image_mpp=image_mpp, mpp=script.mpp)
    text = replace_block(script.text, block)
    parse_script_text(text, name if name is not None else script.path)
    return text, stats, nucleus_sizes(images, image_mpp=image_mpp, mpp=script.mpp)
