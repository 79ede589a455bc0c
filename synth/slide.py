"""Synthetic whole slides with their ground truth: ``python -m synth slide``.

A slide is a pyramidal tiled TIFF (OME-TIFF, or SVS-style tiled JPEG that OpenSlide opens) of
tissue on glass, whose tissue is made of scenario-3 samples (:mod:`synth.scenario3`), with a
truth of every visible nucleus beside it::

    python -m synth slide --scenario scenario3 --size 8192 8192 -o slide.ome.tif \\
        --reference runs/reference.h5 --seed 0

writes ``slide.ome.tif``, ``slide_truth.csv`` (``id,x,y,class,area_um2``) and
``slide_truth.json`` (the slide's facts).  How a slide is made (``docs/synth.md``, "Synthetic
whole slides"):

* **Tissue**: a smooth Gaussian random field on a coarse grid (one cell per
  ``ceil(max(H, W) / 256)`` px), plus an elliptic bump that keeps the section off the slide's
  edges, thresholded at the quantile that covers a fraction uniform in
  :data:`TISSUE_COVERAGE` of the slide; components smaller than a tenth of the largest are
  dropped and holes filled, so there are one or a few irregular blobs.  Smoothed and upsampled
  bilinearly, it gives the tissue's opacity ``alpha`` (a soft edge a few µm wide); a pixel is
  tissue when ``alpha >= 0.5``.
* **Glass**: :data:`GLASS` with white noise of standard deviation :data:`GLASS_NOISE`.
* **Content**: the slide is cut into a grid of generator tiles, each the script's image size
  at the script's pixel size (300 px at 0.48 µm/px = 144 µm, 576 px of the slide at 0.25 µm/px).
  Tile ``k`` (raster order over the whole grid) is one sample drawn with its own spawn,
  ``SeedSequence(seed, spawn_key=(0, k))`` (:func:`tile_rng`); tiles without tissue are
  skipped.  Its noisy image ``u0`` is resampled to the slide's pixel size (bilinear), its
  visible nuclei (:func:`synth.scenario3.sample_layout`) with nearest neighbours, and pasted
  as ``alpha * tile + (1 - alpha) * glass``.  Tiles meet without blending: a nucleus cut by a
  tile's edge stays cut, as in the generator's own images.
* **Regions**: each tile is drawn from one of four variants of the script
  (:data:`REGION_OVERRIDES`): ``tumour`` (dense tumour nests, few immune cells), ``immune``
  (lymphocyte aggregates in every tile, many scattered and infiltrating lymphocytes, few
  tumour nuclei), ``stroma`` (most regions fibrous stroma with fibroblasts, few tumour nuclei)
  and ``mixed`` (the script unchanged).  Which variant a tile gets is the argmax of four
  smooth random fields over the tile grid (correlation :data:`REGION_CORR_UM`), so areas of
  several tiles share a variant.
* **One stain per slide**: per tile the script's stain variation and JPEG are turned off
  (``[degrade]`` ``hed_scale``, ``hed_shift``, ``lab_shift``, ``jpeg_probability``); one stain
  draw of the script's ``[degrade]`` is applied to every tile instead, so the slide does not
  look like a patchwork.  Scale jitter, focus blur and noise stay per tile.

Truth: a nucleus is *visible* in the slide on its pixels of the resampled instance map that
lie on tissue (``alpha >= 0.5``).  It is kept when at least :data:`MIN_VISIBLE_FRACTION` of
its pixels in the tile are visible (not cut away by the tissue's edge) and the visible part
has at least :data:`MIN_AREA_UM2` µm²; its centroid and area are those of the visible part.
Coordinates are level-0 pixel indices (``x`` = column, ``y`` = row, the centre of the top-left
pixel is (0, 0)).  Ids run 1..N in tile raster order.

Interaction figures: :func:`interaction_figures` computes them from the truth with
:func:`vnumba.analysis.interactions.compute_interactions` — the definitions the whole-slide
analysis reports with (immune cells within 20 µm of a tumour nucleus, scenario 2's
immune-rich rule, the 250-µm grid) — and the JSON holds them under ``interactions``, with the
grid (``interactions_grid``) and the immune-rich areas (``immune_rich_areas``, a GeoJSON
geometry in level-0 px, QuPath's corner origin).

Randomness: streams ``SeedSequence(seed, spawn_key=(stream, index))`` — stream 0 the tiles,
1 the tissue, 2 the region variants, 3 the stain, 4 the glass noise (per grid cell); the
same seed gives the same pixels and the same truth.

Memory: level 0 is assembled tile by tile in a disk-backed array
(:func:`vnumba.io.outputs.disk_array`: read and written with ``pread``/``pwrite``, its blocks
reserved when it is made, so a full disk fails at once with the file named) in a temporary
folder ``.NAME.<pid>.work`` beside the output (removed afterwards, or by the next run when a
killed run left it), each lower level is averaged from it in row
bands into its own file, and the TIFF is written from tile iterators over bands of them; the
RAM used is a few generator tiles and one band, whatever the slide's size.  The TIFF is written to a
temporary file, then the truth files (each atomically), then the TIFF is moved into place
(:func:`vnumba.io.outputs.atomic_write`): a failed TIFF writes nothing, and a slide never
appears without its truth.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from . import GENERATOR_VERSION, __version__
from .degrade import DegradeSpec, stain_variation
from .generator import generate_sample
from .noise import gaussian_random_field

__all__ = [
    "DEFAULT_MPP", "DEFAULT_TILE", "DEFAULT_SIZE", "REGION_KINDS", "REGION_OVERRIDES",
    "CLASSES", "MIN_AREA_UM2", "MIN_VISIBLE_FRACTION", "SlideResult", "truth_paths",
    "region_scripts", "tile_rng", "tissue_field", "pyramid_shapes", "write_slide",
    "interaction_figures", "read_truth",
]

DEFAULT_MPP = 0.25
DEFAULT_TILE = 256
DEFAULT_SIZE = (8192, 8192)
#: Lower levels are added (each half the size of the one above) until the longer side is at
#: most this, and there are always at least two levels.
TOP_LEVEL_MAX = 1024
#: Nucleus classes of the truth (keys of :data:`synth.scenario3.CLASS_LAYERS`).
CLASSES = ("tumour", "immune", "other")
#: A nucleus clipped by the tissue's edge is kept when this share of its pixels is visible.
MIN_VISIBLE_FRACTION = 0.5
#: Visible parts smaller than this (µm²) are dropped: a fragment of a nucleus cut by a tile's
#: or the tissue's edge that no detector could find (a lymphocyte has ~19 µm²).
MIN_AREA_UM2 = 4.0
TISSUE_COVERAGE = (0.5, 0.7)
GLASS = (0.945, 0.940, 0.950)
GLASS_NOISE = 0.008
#: Correlation length (Gaussian sigma, µm) of the fields that choose the tiles' variants.
REGION_CORR_UM = 150.0
SVS_JPEG_QUALITY = 90

# randomness streams (spawn_key[0])
_TILES, _TISSUE, _REGIONS, _STAIN, _GLASS = range(5)

#: The variants of the script, region kind -> {(table, key): TOML value}.  Keys of a table the
#: script lacks are skipped (that feature is off in the script).
REGION_KINDS = ("mixed", "tumour", "immune", "stroma")
REGION_OVERRIDES = {
    "mixed": {},
    "tumour": {("tumour_nuclei", "count"): "[90, 130]",
               ("immune_cells", "count"): "[5, 25]",
               ("aggregates", "probability"): "0.1",
               ("stroma", "regions"): "[0, 0]"},
    "immune": {("tumour_nuclei", "count"): "[15, 50]",
               ("immune_cells", "count"): "[80, 160]",
               ("aggregates", "probability"): "1.0",
               ("aggregates", "count"): "[1, 3]",
               ("aggregates", "radius"): "[40.0, 100.0]",
               ("infiltrate", "per_tumour"): "[0.15, 0.35]"},
    "stroma": {("tumour_nuclei", "count"): "[5, 30]",
               ("immune_cells", "count"): "[10, 40]",
               ("aggregates", "probability"): "0.15",
               ("stroma", "regions"): "[4, 7]",
               ("stroma", "density"): "[3.0, 8.0]"},
}
#: Applied to every variant: the stain is drawn once per slide, JPEG is the file's business.
_PER_SLIDE = {("degrade", "hed_scale"): "0.0", ("degrade", "hed_shift"): "0.0",
              ("degrade", "lab_shift"): "[0.0, 0.0, 0.0]",
              ("degrade", "jpeg_probability"): "0.0"}


# --------------------------------------------------------------------------- pieces


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(stream), int(index))))


def tile_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of generator tile ``index`` (raster order over the whole grid): its own
    spawn ``SeedSequence(seed, spawn_key=(0, index))``, as :func:`synth.generator.sample_rng`
    gives each sample of a dataset its own."""
    return _rng(seed, _TILES, index)


def truth_paths(path) -> tuple[Path, Path]:
    """``NAME_truth.csv`` and ``NAME_truth.json`` beside the slide ``path`` (NAME: its file
    name without ``.ome.tif(f)``, ``.svs`` or ``.tif(f)``)."""
    path = Path(path)
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".svs", ".tiff", ".tif"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    return path.with_name(f"{name}_truth.csv"), path.with_name(f"{name}_truth.json")


def _override(script, items):
    from .script import _insert_in_table, _replace_in_table, _table_span, parse_script_text

    text = script.text
    for (table, key), value in items.items():
        if _table_span(text, table)[1] is None:
            continue
        line = f"{key} = {value}"
        text, n = _replace_in_table(text, table, key, line)
        if n == 0:
            text, _ = _insert_in_table(text, table, line)
    return parse_script_text(text, script.path)


def region_scripts(script, sample_size=None) -> dict:
    """The script's variant per region kind (:data:`REGION_OVERRIDES`, with the per-tile stain
    and JPEG off), at ``sample_size`` (H, W) when given."""
    if sample_size is not None:
        script = script.with_size(*sample_size)
    return {k: _override(script, {**_PER_SLIDE, **REGION_OVERRIDES[k]}) for k in REGION_KINDS}


def tissue_field(rng: np.random.Generator, shape) -> tuple[np.ndarray, int, float]:
    """The tissue on a coarse grid.

    Returns
    -------
    field : ndarray (h, w) float32 in [0, 1]
        Smoothed tissue indicator; the slide's opacity is its bilinear upsampling through
        :func:`_alpha`.
    cell : int
        Slide pixels per grid cell.
    coverage : float
        The drawn target fraction of the slide.
    """
    H, W = shape
    cell = max(1, math.ceil(max(H, W) / 256))
    h, w = math.ceil(H / cell), math.ceil(W / cell)
    coverage = float(rng.uniform(*TISSUE_COVERAGE))
    z = gaussian_random_field(rng, (h, w), corr=min(h, w) / 7.0, dtype=np.float64)
    yy = (np.arange(h) + 0.5) / h - 0.5
    xx = (np.arange(w) + 0.5) / w - 0.5
    r2 = (yy[:, None] / 0.45) ** 2 + (xx[None, :] / 0.45) ** 2
    f = z + 1.5 * (1.0 - r2)
    on = f > np.quantile(f, 1.0 - coverage)
    lab, n = ndi.label(on)
    if n:
        sizes = np.bincount(lab.ravel())[1:]
        on = np.isin(lab, 1 + np.flatnonzero(sizes >= 0.1 * sizes.max()))
    on = ndi.binary_fill_holes(on)
    return ndi.gaussian_filter(on.astype(np.float32), 1.0, mode="constant"), cell, coverage


def _axis(start: int, n: int, g: float, offset: float, size: int):
    """Source coordinates of slide pixels ``start .. start+n-1`` in a source of ``size`` px
    scaled by ``g`` (slide px per source px) whose first pixel is at source coordinate
    ``offset``: bilinear indices and weights, and nearest indices."""
    y = (np.arange(start, start + n) + 0.5) / g - 0.5 - offset
    y0 = np.floor(y)
    wt = (y - y0).astype(np.float32)
    i0 = np.clip(y0.astype(np.int64), 0, size - 1)
    i1 = np.clip(y0.astype(np.int64) + 1, 0, size - 1)
    near = np.clip(np.floor(y + 0.5).astype(np.int64), 0, size - 1)
    return i0, i1, wt, near


def _bilinear(img: np.ndarray, ay, ax) -> np.ndarray:
    """``img`` (..., h, w) sampled at the axes of :func:`_axis`."""
    i0, i1, wy, _ = ay
    j0, j1, wx, _ = ax
    rows = img[..., i0, :] * (1 - wy)[:, None] + img[..., i1, :] * wy[:, None]
    return rows[..., j0] * (1 - wx) + rows[..., j1] * wx


def _alpha(field, cell, r0, r1, c0, c1) -> np.ndarray:
    """Tissue opacity of slide rows r0:r1, columns c0:c1 (float32 in [0, 1])."""
    h, w = field.shape
    s = _bilinear(field, _axis(r0, r1 - r0, cell, 0.0, h), _axis(c0, c1 - c0, cell, 0.0, w))
    return np.clip((s - 0.5) * 3.0 + 0.5, 0.0, 1.0).astype(np.float32)


def _edges(n_px: int, tile_px: int, g: float) -> list:
    """Slide-pixel edges of the generator tiles along one axis: tile ``i`` covers the slide
    pixels whose centre maps into its source pixels [i*tile_px, (i+1)*tile_px)."""
    edges = [0]
    i = 1
    while edges[-1] < n_px:
        edges.append(min(n_px, math.ceil(i * tile_px * g - 0.5 - 1e-9)))
        i += 1
    return edges


def _region_kinds(rng, shape, corr_tiles: float) -> np.ndarray:
    """Variant index (into :data:`REGION_KINDS`) of every grid tile."""
    z = rng.standard_normal((len(REGION_KINDS), *shape))
    if corr_tiles > 0:
        z = np.stack([ndi.gaussian_filter(f, corr_tiles, mode="reflect") for f in z])
    sd = z.reshape(len(z), -1).std(axis=1)
    z = z / np.where(sd > 0, sd, 1.0)[:, None, None]
    return z.argmax(axis=0)


def pyramid_shapes(shape) -> list:
    """(H, W) of every level: level 0, then each half (rounded up) of the one above, until
    the longer side is at most :data:`TOP_LEVEL_MAX`; at least two levels."""
    out = [tuple(int(v) for v in shape)]
    while max(out[-1]) > TOP_LEVEL_MAX or (len(out) < 2 and max(out[-1]) > 1):
        out.append(tuple((v + 1) // 2 for v in out[-1]))
    return out


def _halve(src, dst, band: int = 512) -> None:
    """``dst`` = 2x2 means of ``src`` (uint8 (H, W, 3) arrays; the last odd row / column is
    repeated), in row bands."""
    H, W = src.shape[:2]
    for r in range(0, dst.shape[0], band // 2):
        a = np.asarray(src[2 * r: min(H, 2 * r + band)], dtype=np.float32)
        if a.shape[0] % 2:
            a = np.concatenate([a, a[-1:]], axis=0)
        if W % 2:
            a = np.concatenate([a, a[:, -1:]], axis=1)
        m = 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])
        dst[r: r + m.shape[0]] = np.clip(m + 0.5, 0, 255).astype(np.uint8)


def _tiles(arr, t: int):
    for r in range(0, arr.shape[0], t):
        band = arr[r: r + t]  # one read of whole rows (a DiskArray reads them in one call)
        for c in range(0, arr.shape[1], t):
            yield np.ascontiguousarray(band[:, c: c + t])


def _bar(total, desc, enabled, unit="tile"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=True)


# --------------------------------------------------------------------------- truth


#: Class of each fine class :func:`synth.scenario3.sample_layout` gives (its FINE_OF_CLASS).
def _class_of_fine():
    from .scenario3 import FINE_OF_CLASS

    return {v: k for k, v in FINE_OF_CLASS.items()}


def _tile_truth(inst, alpha, r0, c0, mpp):
    """Kept nuclei of one pasted tile: (local ids, x, y, area µm²)."""
    n = int(inst.max(initial=0)) + 1
    if n == 1:
        e = np.zeros(0)
        return e.astype(np.int64), e, e, e
    full = np.bincount(inst.ravel(), minlength=n)
    vis = (alpha >= 0.5) & (inst > 0)
    lab = inst[vis]
    rr, cc = np.nonzero(vis)
    cnt = np.bincount(lab, minlength=n).astype(np.float64)
    sy = np.bincount(lab, weights=rr, minlength=n)
    sx = np.bincount(lab, weights=cc, minlength=n)
    area = cnt * mpp * mpp
    keep = (cnt > 0) & (cnt >= MIN_VISIBLE_FRACTION * full) & (area >= MIN_AREA_UM2)
    keep[0] = False
    ids = np.flatnonzero(keep)
    return ids, c0 + sx[ids] / cnt[ids], r0 + sy[ids] / cnt[ids], area[ids]


def interaction_figures(cells: dict, mpp: float, tissue_area_mm2: float, tissue_mask, cell: int,
                        size) -> dict:
    """The interaction figures of the truth, by the whole-slide analysis' own definitions
    (:func:`vnumba.analysis.interactions.compute_interactions`: neighbours within 20 µm,
    scenario 2's immune-rich rule, the 250-µm grid), so that ``python -m vnumba.slide`` on
    the slide can be compared with them figure by figure.

    Parameters
    ----------
    cells : dict
        ``x``, ``y`` (level-0 px), ``class`` (str) and ``area_um2`` arrays of the truth.
    mpp : float
    tissue_area_mm2 : float
        The slide's tissue (level-0 pixels with ``alpha >= 0.5``).
    tissue_mask : ndarray of bool (h, w)
        The tissue on the coarse grid (``cell`` level-0 px per pixel), for the grid's tissue
        per cell and to clip the immune-rich areas.
    size : (H, W)

    Returns
    -------
    dict
        ``stats`` (:func:`~vnumba.analysis.interactions.interaction_stats`' keys), ``grid``
        (counts and densities per cell) and ``immune_rich_areas`` (a GeoJSON geometry in
        level-0 px, origin at the top-left corner of the first pixel, QuPath's convention).
    """
    import shapely

    from vnumba.analysis.interactions import compute_interactions

    H, W = size
    res = compute_interactions(np.column_stack([cells["x"], cells["y"]]).reshape(-1, 2),
                               np.asarray(cells["class"]).astype(str), mpp, tissue_area_mm2,
                               areas_um2=cells["area_um2"], tissue_mask=tissue_mask,
                               tissue_downsample=float(cell), region=(0.0, 0.0, float(W), float(H)))
    return {"stats": res.stats, "grid": res.grid.to_dict(),
            "immune_rich_areas": json.loads(shapely.to_geojson(res.immune_rich_areas))}


def read_truth(path) -> dict:
    """The truth CSV of a slide as arrays ``id, x, y, class, area_um2``."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {"id": np.array([int(r["id"]) for r in rows], np.int64),
            "x": np.array([float(r["x"]) for r in rows]),
            "y": np.array([float(r["y"]) for r in rows]),
            "class": np.array([r["class"] for r in rows], dtype=object),
            "area_um2": np.array([float(r["area_um2"]) for r in rows])}


# --------------------------------------------------------------------------- writing


def _write_ome(path, levels, mpp, tile, name, bar):
    import tifffile

    res = lambda k: (1e4 / (mpp * 2 ** k),) * 2  # noqa: E731  pixels per cm
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for k, arr in enumerate(levels):
            kw = dict(shape=arr.shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                      compression="zlib", compressionargs={"level": 6}, resolution=res(k),
                      resolutionunit="CENTIMETER")
            if k == 0:
                kw.update(subifds=len(levels) - 1,
                          metadata={"axes": "YXS", "Name": name, "PhysicalSizeX": mpp,
                                    "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp,
                                    "PhysicalSizeYUnit": "µm"})
            else:
                kw.update(subfiletype=1, metadata=None)
            tif.write(_counted(_tiles(arr, tile), bar), **kw)


def _svs_header(H, W, tile):
    return (f"Aperio Image Library v12.0.0 (vnumba synth {__version__}, synthetic)\r\n"
            f"{W}x{H} [0,0 {W}x{H}] ({tile}x{tile}) JPEG/RGB Q={SVS_JPEG_QUALITY}")


def _write_svs(path, levels, mpp, tile, name, bar):
    """Aperio layout: level 0 (its ImageDescription holds ``|MPP = ...``), a stripped
    thumbnail, then the lower levels; JPEG tiles (YCbCr)."""
    import tifffile

    H, W = levels[0].shape[:2]
    mag = 10.0 / mpp  # 0.25 um/px ~ 40x
    desc0 = (f"{_svs_header(H, W, tile)}|AppMag = {mag:g}|MPP = {mpp:g}|Filename = {name}"
             f"|Title = synthetic slide (python -m synth slide)")
    big = H * W * 3 > 2 ** 31
    jpeg = dict(compression="jpeg", compressionargs={"level": SVS_JPEG_QUALITY}, photometric="rgb")
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        for k, arr in enumerate(levels):
            h, w = arr.shape[:2]
            desc = desc0 if k == 0 else f"{_svs_header(H, W, tile)} -> {w}x{h} - |AppMag = {mag:g}|MPP = {mpp:g}"
            tif.write(_counted(_tiles(arr, tile), bar), shape=arr.shape, dtype=np.uint8,
                      tile=(tile, tile), description=desc, subfiletype=0,  # as Aperio's
                      metadata=None, resolution=(1e4 / (mpp * 2 ** k),) * 2,
                      resolutionunit="CENTIMETER", **jpeg)
            if k == 0:
                thumb = levels[-1][:]
                f = max(1, math.ceil(max(thumb.shape[:2]) / 768))
                thumb = np.ascontiguousarray(thumb[::f, ::f])
                th, tw = thumb.shape[:2]
                tif.write(thumb, description=f"{_svs_header(H, W, tile)} -> {tw}x{th} - ",
                          metadata=None, rowsperstrip=16, **jpeg)


def _counted(it, bar):
    for x in it:
        bar.update(1)
        yield x


# --------------------------------------------------------------------------- the slide


@dataclass
class SlideResult:
    """What :func:`write_slide` wrote."""

    slide: Path
    truth_csv: Path
    truth_json: Path
    facts: dict = field(default_factory=dict)


def _remove_stale_work(path: Path) -> None:
    """Remove ``.NAME.<pid>.work`` folders beside ``path`` that a killed run left (its process
    is gone)."""
    for q in path.parent.glob(f".{path.name}.*.work"):
        pid = q.name[len(path.name) + 2: -len(".work")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(q, ignore_errors=True)
        except PermissionError:
            pass


def _prepare(script, reference):
    from .reference import ReferenceBundle, load_reference
    from .scenario3 import PreparedReference, prepare_reference, resolve_reference

    if isinstance(reference, PreparedReference):
        return reference
    if not isinstance(reference, ReferenceBundle):
        path = resolve_reference(script, reference)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: scenario-3 reference bundle not found; build one with 'python -m synth "
                f"reference IMAGES -o {path.name} --mpp MPP' or pass --reference FILE")
        reference = load_reference(path)
    return prepare_reference(reference, script.mpp)


def write_slide(path, script="scenario3", *, size=DEFAULT_SIZE, seed: int = 0,
                mpp: float = DEFAULT_MPP, reference=None, tile: int = DEFAULT_TILE,
                fmt: str | None = None, sample_size=None, progress: bool = True) -> SlideResult:
    """Write a synthetic pyramidal slide and its truth (see the module docstring).

    Parameters
    ----------
    path : path-like
        The slide (``.ome.tif`` or ``.svs``); the truth goes beside it (:func:`truth_paths`).
    script : str, path-like or synth.script.Script
        A scenario-3 script (name or path).
    size : (H, W)
        Level-0 size in pixels.
    seed : int
    mpp : float
        µm per pixel of level 0.
    reference : None, path-like, ReferenceBundle or PreparedReference
        The scenario-3 reference bundle (default: the script's ``[reference].path``).
    tile : int
        TIFF tile size (a multiple of 16).
    fmt : "ome", "svs" or None
        None: ``svs`` for a ``.svs`` path, otherwise ``ome``.
    sample_size : (h, w) or None
        Generator tile size in the script's pixels (default: the script's size).
    progress : bool
        tqdm bars on stderr.

    Returns
    -------
    SlideResult
    """
    from vnumba.io.outputs import atomic_write, atomic_write_text, disk_array

    from .scenario3 import sample_layout
    from .script import Script, load_script

    path = Path(path)
    base = script if isinstance(script, Script) else load_script(script)
    if base.scenario != "scenario3":
        raise ValueError(f"{base.path or base.name}: synth slide draws scenario-3 tissue (nucleus "
                         f"classes tumour / immune / other); this script is of kind {base.scenario!r}")
    H, W = (int(v) for v in size)
    if H < 16 or W < 16:
        raise ValueError(f"slide size must be at least 16 x 16 px, got {H} x {W}")
    if not (tile >= 16 and tile % 16 == 0):
        raise ValueError(f"TIFF tile size must be a positive multiple of 16, got {tile}")
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number, got {mpp}")
    fmt = fmt or ("svs" if path.suffix.lower() == ".svs" else "ome")
    if fmt not in ("ome", "svs"):
        raise ValueError(f"format must be 'ome' or 'svs', got {fmt!r}")
    scripts = region_scripts(base, sample_size)
    ref = _prepare(scripts["mixed"], reference)
    first = scripts["mixed"]
    Th, Tw = first.size
    g = first.mpp / mpp  # slide px per generator px
    rows, cols = _edges(H, Th, g), _edges(W, Tw, g)
    gh, gw = len(rows) - 1, len(cols) - 1
    kinds = _region_kinds(_rng(seed, _REGIONS), (gh, gw), REGION_CORR_UM / (Th * first.mpp))
    field_, cell, coverage = tissue_field(_rng(seed, _TISSUE), (H, W))
    deg = base["degrade"] or DegradeSpec()
    stain = stain_variation(_rng(seed, _STAIN), deg)
    fine = _class_of_fine()
    glass = np.asarray(GLASS, np.float32)
    csv_path, json_path = truth_paths(path)
    shapes = pyramid_shapes((H, W))

    _remove_stale_work(path)
    work = path.with_name(f".{path.name}.{os.getpid()}.work")
    shutil.rmtree(work, ignore_errors=True)  # this process's own leftover
    work.mkdir(parents=True)
    try:
        # read and written with pread/pwrite, not memory-mapped: mapped pages that were
        # written stay in the process's resident set (vnumba.io.outputs.DiskArray), and the
        # blocks are reserved up front, so a full disk is one error here, not a SIGBUS later
        levels = [disk_array(work / f"level{k}.raw", np.uint8, (*s, 3))
                  for k, s in enumerate(shapes)]
        out = levels[0]
        parts, tiles_info = [], []
        tissue_px = 0
        n_generated = 0
        with _bar(gh * gw, "synth slide: tissue", progress) as bar:
            for i in range(gh):
                r0, r1 = rows[i], rows[i + 1]
                for j in range(gw):
                    c0, c1 = cols[j], cols[j + 1]
                    k = i * gw + j
                    alpha = _alpha(field_, cell, r0, r1, c0, c1)
                    grng = _rng(seed, _GLASS, k)
                    img = glass + np.float32(GLASS_NOISE) * grng.standard_normal((r1 - r0, c1 - c0, 3),
                                                                                dtype=np.float32)
                    if alpha.max() > 0:
                        kind = REGION_KINDS[int(kinds[i, j])]
                        smp = generate_sample(scripts[kind], tile_rng(seed, k), ref)
                        ay, ax = _axis(r0, r1 - r0, g, i * Th, Th), _axis(c0, c1 - c0, g, j * Tw, Tw)
                        tis = _bilinear(stain(smp.noisy), ay, ax).transpose(1, 2, 0)
                        a = alpha[..., None]
                        img = a * tis + (1 - a) * img
                        lay = sample_layout(smp.layers)
                        inst = lay.instances[np.ix_(ay[3], ax[3])]
                        ids, x, y, area = _tile_truth(inst, alpha, r0, c0, mpp)
                        cls = np.array([fine[int(v)] for v in lay.fine_class[ids]], dtype=object)
                        parts.append((x, y, cls, area))
                        tissue_px += int(np.count_nonzero(alpha >= 0.5))
                        n_generated += 1
                        tiles_info.append({"row": i, "col": j, "kind": kind,
                                           "bbox": [c0, r0, c1 - c0, r1 - r0],
                                           "nuclei": int(ids.size)})
                    out[r0:r1, c0:c1] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
                    bar.update(1)
        for k in range(1, len(levels)):
            _halve(levels[k - 1], levels[k])

        x = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        cls = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=object)
        area = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0)
        cells = {"id": np.arange(1, x.size + 1), "x": x, "y": y, "class": cls, "area_um2": area}

        tissue_mm2 = tissue_px * mpp * mpp / 1e6
        facts = {
            "format": "vnumba-synth-slide-truth", "version": 1,
            "slide": path.name, "slide_format": fmt, "size": [H, W], "mpp": mpp,
            "levels": [list(s) for s in shapes], "tile": tile, "seed": int(seed),
            "scenario": base.name, "scenario_kind": base.scenario,
            "generator": {"package": "synth", "version": __version__,
                          "generator_version": GENERATOR_VERSION, "command": "synth slide",
                          "reference": ref.fingerprint},
            "script": base.text, "script_path": base.path,
            "sample_size": [Th, Tw], "sample_mpp": first.mpp, "grid": [gh, gw],
            "tiles_generated": n_generated,
            "tissue_area_mm2": tissue_mm2, "tissue_fraction": tissue_px / float(H * W),
            "tissue_coverage_drawn": coverage,
            "nuclei": int(x.size),
            "counts": {c: int(np.count_nonzero(cls == c)) for c in CLASSES},
            "truth_rule": {"visible": "instance pixels on tissue (alpha >= 0.5)",
                           "min_visible_fraction": MIN_VISIBLE_FRACTION,
                           "min_area_um2": MIN_AREA_UM2,
                           "coordinates": "level-0 pixel indices, x = column, y = row"},
            "regions": {"kinds": {k: {f"{t}.{key}": v for (t, key), v in REGION_OVERRIDES[k].items()}
                                  for k in REGION_KINDS},
                        "per_slide": {f"{t}.{key}": v for (t, key), v in _PER_SLIDE.items()},
                        "tiles": tiles_info},
        }
        inter = interaction_figures(cells, mpp, tissue_mm2, field_ >= 0.5, cell, (H, W))
        facts["interactions"] = inter["stats"]
        facts["interactions_grid"] = inter["grid"]
        facts["immune_rich_areas"] = inter["immune_rich_areas"]

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "x", "y", "class", "area_um2"])
        for r in zip(cells["id"], x, y, cls, area):
            w.writerow([int(r[0]), f"{r[1]:.2f}", f"{r[2]:.2f}", r[3], f"{r[4]:.2f}"])
        writer = _write_svs if fmt == "svs" else _write_ome

        def write_all(tmp, lv=levels):
            # the TIFF into its temporary file, then the truth, then the TIFF is moved into
            # place: nothing is written when the TIFF fails, and a slide never appears
            # without its truth
            writer(tmp, lv, mpp, tile, path.stem, bar)
            atomic_write_text(csv_path, buf.getvalue(), newline="")
            atomic_write_text(json_path, json.dumps(_jsonable(facts), indent=1) + "\n")

        n_tiff = sum(math.ceil(s[0] / tile) * math.ceil(s[1] / tile) for s in shapes)
        with _bar(n_tiff, f"synth slide: {path.name}", progress) as bar:
            atomic_write(path, write_all)
        for a in levels:  # close the files before their folder is removed
            a.close()
        del levels, out
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return SlideResult(path, csv_path, json_path, facts)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
