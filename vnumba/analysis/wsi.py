"""Whole-slide prediction in bounded memory: level choice, tissue, streaming tiles, seams.

The engine composes a slide reader (:mod:`vnumba.io.slides`), a model
(:class:`vnumba.io.models.Model`), tissue detection (:mod:`vnumba.analysis.tissue`) and the
object, class and interaction code of this package; the command line is
:mod:`vnumba.slide`.  Nothing here allocates an array of the slide's size.

Geometry
--------
The network runs on the *model grid*: the analysed region (level-0 box ``X, Y, W, H``)
resampled to the model's µm/px (``Hm x Wm`` pixels).  Model pixel ``(i, j)`` has its centre at
level-``L`` coordinates ``(Y / d + (i + 1/2) s - 1/2, X / d + (j + 1/2) s - 1/2)`` with ``d`` the
level's downsample and ``s`` = model µm/px / level µm/px; when ``s`` is 1 (within 0.1 %) the
level's pixels are used as they are.  The level is the one whose µm/px is closest to the
model's (:meth:`SlideReader.best_level`).

The grid is cut into ``T x T`` *blocks* (``--tile``).  Each block is extended by an *object
halo* ``o`` (:attr:`SlideOptions.halo_um`, larger than a nucleus), and the network runs on a
*window* that adds the network's receptive radius ``R`` to that (clipped at the region's
edge, aligned for the U-Net as in :func:`vnumba.analysis.inference.tile_windows`).  Inside the
window every output pixel of the extended block therefore sees exactly the inputs it sees in
a whole-region pass, so probabilities do not depend on ``T``.  The window's pixels are read
from the level with a margin for the resampling filter (bilinear sampling after a Gaussian
anti-alias when shrinking, :func:`_resample_window`), which is local: a pixel's value depends
only on level pixels within ``4 sigma + 1`` of it, so the resampled window too is independent of
``T`` up to floating-point rounding of the filter.

Objects are cut (threshold, watershed split, minimum area: :mod:`vnumba.analysis.objects`) on
the extended block, and a block keeps the objects whose centroid lies in its own block: every
nucleus belongs to exactly one block, and it is whole there as long as it is smaller than the
halo (:data:`DEFAULT_HALO_UM` = 12 µm, a large tumour nucleus).

Colour normalisation (Reinhard, when the model records a target) uses Lab statistics taken
once per slide from its tissue on the low-resolution tissue level, never per tile.

Memory: one window at a time (``(T + 2 (o + R))^2`` pixels through the network), plus the
per-nucleus table (a few dozen bytes per nucleus).  Probabilities go to a disk-backed array
in the work folder, then into a tiled pyramidal OME-TIFF.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from scipy import ndimage as ndi

from vnumba.analysis.inference import model_mask_classes, model_mpp, tile_windows
from vnumba.io.outputs import disk_array

__all__ = ["DEFAULT_HALO_UM", "DEFAULT_TILE", "SlideOptions", "SlidePlan", "plan_slide",
           "ModelGridReader", "apply_window", "BlockResult", "process_block", "NucleusTable",
           "slide_key", "run_blocks", "collect_nuclei", "on_tissue"]

#: Object halo around each block, µm: larger than the largest nucleus (tumour nuclei reach
#: ~10 µm across in the PUMA layouts, q95 of the equivalent diameter 9.9 µm).
DEFAULT_HALO_UM = 12.0
#: Block edge at the model's resolution, pixels.
DEFAULT_TILE = 512
#: Relative difference of pixel sizes below which the level is used without resampling.
_SAME_SCALE = 1e-3


@dataclass(frozen=True)
class SlideOptions:
    """Options of a slide run (defaults: the command line's).

    Attributes
    ----------
    tile : int
        Block edge in model pixels.
    halo_um : float
        Object halo around each block, µm.
    threshold : float
        Nucleus probability threshold.
    split_um, min_area_um2 : float
        Watershed split depth (µm) and smallest object (µm²), as ``vnumba.predict``.
    min_tissue : float
        Blocks whose (extended) box holds less tissue than this fraction are skipped.
    region : tuple of 4 int or None
        Level-0 box ``(x, y, width, height)`` to analyse (default: the whole slide).
    mpp : float or None
        Level-0 pixel size overriding the slide's metadata.
    device : {"cpu", "cuda"}
    """

    tile: int = DEFAULT_TILE
    halo_um: float = DEFAULT_HALO_UM
    threshold: float = 0.5
    split_um: float = 0.5
    min_area_um2: float = 1.25
    min_tissue: float = 1e-6
    region: tuple | None = None
    mpp: float | None = None
    device: str = "cpu"

    def __post_init__(self):
        if not (isinstance(self.tile, (int, np.integer)) and 64 <= self.tile <= 8192):
            raise ValueError(f"tile must be an integer in [64, 8192], got {self.tile!r}")
        for name in ("halo_um", "split_um", "min_area_um2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold!r}")
        if not (0.0 <= self.min_tissue <= 1.0):
            raise ValueError(f"min_tissue must lie in [0, 1], got {self.min_tissue!r}")
        if self.region is not None:
            r = tuple(int(v) for v in self.region)
            if len(r) != 4 or r[0] < 0 or r[1] < 0 or r[2] < 1 or r[3] < 1:
                raise ValueError(f"region must be X Y W H with X, Y >= 0 and W, H >= 1, got "
                                 f"{self.region!r}")
            object.__setattr__(self, "region", r)
        if self.mpp is not None and not (math.isfinite(self.mpp) and 0.01 <= self.mpp <= 100):
            raise ValueError(f"mpp must be a pixel size in um/px (0.01-100), got {self.mpp!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "SlideOptions":
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise ValueError(f"unknown slide option {k!r}")
        return cls(**d)


@dataclass(frozen=True)
class SlidePlan:
    """Where and at which resolution a slide is analysed (see the module docstring).

    Attributes
    ----------
    level : int
    level_mpp, mpp0, model_mpp : float
        µm/px of the level, of level 0 and of the model grid.
    downsample : float
        Level-0 pixels per level pixel.
    step : float
        Level pixels per model pixel (``s``; 1.0 when no resampling).
    region : tuple (x, y, width, height)
        Level-0 box.
    grid : tuple (Hm, Wm)
        Model-grid size.
    halo, margin, multiple : int
        Object halo and receptive radius in model pixels; window alignment (U-Net).
    blocks : list of (block, window)
        ``(r0, r1, c0, c1)`` ranges on the model grid, :func:`tile_windows` order.
    """

    level: int
    level_mpp: float
    mpp0: float
    model_mpp: float
    downsample: float
    step: float
    region: tuple
    grid: tuple
    halo: int
    margin: int
    multiple: int
    blocks: list = field(repr=False)

    @property
    def level0_per_model(self) -> float:
        """Level-0 pixels per model pixel."""
        return self.model_mpp / self.mpp0

    def extended(self, block) -> tuple:
        """The block grown by the halo, clipped to the grid."""
        r0, r1, c0, c1 = block
        H, W = self.grid
        h = self.halo
        return max(0, r0 - h), min(H, r1 + h), max(0, c0 - h), min(W, c1 + h)

    def to_level0(self, rows, cols):
        """Model-grid coordinates (pixel centres) -> level-0 coordinates (x, y), float64."""
        f = self.level0_per_model
        x = self.region[0] + (np.asarray(cols, np.float64) + 0.5) * f - 0.5
        y = self.region[1] + (np.asarray(rows, np.float64) + 0.5) * f - 0.5
        return x, y


def plan_slide(reader, model, opts: SlideOptions) -> SlidePlan:
    """Choose the level and cut the model grid into blocks.

    Parameters
    ----------
    reader : vnumba.io.slides.SlideReader
    model : vnumba.io.models.Model
        Needs ``meta["mpp"]`` (the µm/px it was trained at) and ``receptive_radius``.
    opts : SlideOptions

    Returns
    -------
    SlidePlan

    Raises
    ------
    ValueError
        The slide has no pixel size and ``opts.mpp`` is not given; the model has none; the
        region lies outside the slide.
    """
    from vnumba.io.slides import SlideError

    m_mpp = model_mpp(model)
    if m_mpp is None:
        raise ValueError("the model records no pixel size (meta['mpp']); it cannot be applied "
                         "to a slide")
    mpp0 = opts.mpp if opts.mpp is not None else reader.mpp
    if mpp0 is None:
        raise SlideError(f"{reader.path}: the slide records no pixel size; give --mpp (um/px of "
                         "level 0, e.g. 0.25 for 40x, 0.5 for 20x)")
    W0, H0 = (int(v) for v in reader.level_dimensions[0])
    X, Y, W, H = opts.region if opts.region is not None else (0, 0, W0, H0)
    if X >= W0 or Y >= H0:
        raise ValueError(f"{reader.path}: region {X} {Y} {W} {H} lies outside the slide "
                         f"({W0} x {H0} px)")
    W, H = min(W, W0 - X), min(H, H0 - Y)
    # level closest to the model's pixel size, measured with the effective level-0 mpp
    ds = [float(d) for d in reader.level_downsamples]
    level = min(range(len(ds)), key=lambda k: (abs(math.log(mpp0 * ds[k] / m_mpp)), ds[k]))
    d = ds[level]
    level_mpp = mpp0 * d
    step = m_mpp / level_mpp
    if abs(step - 1.0) <= _SAME_SCALE:
        step = 1.0
    f = m_mpp / mpp0
    Hm, Wm = max(1, int(round(H / f))), max(1, int(round(W / f)))
    halo = int(math.ceil(opts.halo_um / m_mpp))
    margin = int(model.receptive_radius)
    mult = int(getattr(getattr(model, "config", None), "size_multiple", 1) or 1)
    wins = tile_windows(Hm, Wm, int(opts.tile), halo + margin, mult)
    return SlidePlan(level=level, level_mpp=level_mpp, mpp0=float(mpp0), model_mpp=float(m_mpp),
                     downsample=d, step=step, region=(int(X), int(Y), int(W), int(H)),
                     grid=(Hm, Wm), halo=halo, margin=margin, multiple=mult, blocks=wins)


# ----------------------------------------------------------------------------- reading
class ModelGridReader:
    """Windows of the model grid read from a slide level (colour-normalised, float32).

    Parameters
    ----------
    reader : SlideReader
    plan : SlidePlan
    norm : tuple (source_mean, source_std, target_mean, target_std) or None
        Reinhard statistics (Lab, 3 each); None: no normalisation.
    """

    def __init__(self, reader, plan: SlidePlan, norm=None):
        self.reader, self.plan, self.norm = reader, plan, norm

    def _level_box(self, r0, r1, c0, c1):
        p = self.plan
        oy, ox = p.region[1] / p.downsample, p.region[0] / p.downsample
        y = oy + (np.arange(r0, r1, dtype=np.float64) + 0.5) * p.step - 0.5
        x = ox + (np.arange(c0, c1, dtype=np.float64) + 0.5) * p.step - 0.5
        return y, x

    def read(self, r0, r1, c0, c1) -> np.ndarray:
        """Model-grid window ``[r0, r1) x [c0, c1)`` as float32 (h, w, 3) in [0, 1]."""
        p = self.plan
        y, x = self._level_box(r0, r1, c0, c1)
        sigma = max(0.0, (p.step - 1.0) / 2.0)       # anti-alias when shrinking (skimage's rule)
        pad = int(math.ceil(4.0 * sigma)) + 2
        if p.step == 1.0:
            ly0, lx0 = int(round(y[0])), int(round(x[0]))
            raw = self.reader.read_region(p.level, lx0, ly0, c1 - c0, r1 - r0)
            img = raw.astype(np.float32) / np.float32(255.0)
        else:
            ly0, lx0 = int(math.floor(y[0])) - pad, int(math.floor(x[0])) - pad
            ly1, lx1 = int(math.floor(y[-1])) + pad + 2, int(math.floor(x[-1])) + pad + 2
            raw = self.reader.read_region(p.level, lx0, ly0, lx1 - lx0, ly1 - ly0)
            img = _resample_window(raw.astype(np.float32) / np.float32(255.0), y - ly0, x - lx0,
                                   sigma)
        if self.norm is not None:
            from vnumba.ops.color import reinhard_normalize
            sm, ss, tm, ts = self.norm
            img = np.clip(reinhard_normalize(img, tm, ts, sm, ss), 0.0, 1.0).astype(np.float32)
        return np.ascontiguousarray(img)


def _resample_window(img, y, x, sigma):
    """Bilinear samples of ``img`` (h, w, 3) at rows ``y`` x columns ``x`` (local
    coordinates), after a Gaussian of ``sigma`` (0: none).  Local: a sample depends only on
    pixels within ``4 sigma + 1`` of it, so crops with enough margin give the same values."""
    if sigma > 0:
        img = np.stack([ndi.gaussian_filter(img[..., k], sigma, mode="nearest", truncate=4.0)
                        for k in range(img.shape[2])], axis=2)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    fy = (y - y0).astype(np.float32)[:, None, None]
    fx = (x - x0).astype(np.float32)[None, :, None]
    y0 = np.clip(y0, 0, img.shape[0] - 1)
    x0 = np.clip(x0, 0, img.shape[1] - 1)
    y1 = np.clip(y0 + 1, 0, img.shape[0] - 1)
    x1 = np.clip(x0 + 1, 0, img.shape[1] - 1)
    a = img[y0][:, x0]
    b = img[y0][:, x1]
    c = img[y1][:, x0]
    d = img[y1][:, x1]
    top = a + (b - a) * fx
    bot = c + (d - c) * fx
    return np.clip(top + (bot - top) * fy, 0.0, 1.0).astype(np.float32)


def apply_window(model, img: np.ndarray, multiple: int = 1):
    """The network on one window: ``img`` (h, w, C) float32 -> ``u`` (C, h, w), ``m`` (h, w) or
    (C_m, h, w); a U-Net's window is mirrored up to ``multiple`` at its bottom/right, as
    :func:`vnumba.analysis.inference.predict_array` does."""
    u0 = np.ascontiguousarray(np.moveaxis(img, 2, 0)[None])
    h, w = u0.shape[2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        u0 = np.ascontiguousarray(np.pad(u0, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="symmetric"))
    uo, mo = model.apply(u0)
    return np.asarray(uo)[0, :, :h, :w], np.asarray(mo)[0, ..., :h, :w]


# ----------------------------------------------------------------------------- one block
@dataclass
class BlockResult:
    """What one block contributes.

    Attributes
    ----------
    index : int
    probs : ndarray uint8 (C_m, h, w)
        Class probabilities (one-channel models: the mask) x 255 on the block itself.
    rows, cols : ndarray float64 (n,)
        Centroids of the block's nuclei on the model grid.
    area_px : ndarray int64 (n,)
        Their areas in model pixels.
    class_probs : ndarray float64 (n, C_m)
        Per-nucleus class probabilities (:func:`vnumba.analysis.classes.nucleus_class_probs`).
    mean_prob : ndarray float64 (n,)
    labels : ndarray int32 (he, we)
        The block's nuclei 1..n on the extended block (other objects removed).
    ext : tuple (r0, r1, c0, c1)
        The extended block on the model grid.
    """

    index: int
    probs: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    area_px: np.ndarray
    class_probs: np.ndarray
    mean_prob: np.ndarray
    labels: np.ndarray
    ext: tuple

    def save(self, path) -> None:
        from vnumba.io.outputs import atomic_write

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, index=self.index, probs=self.probs, rows=self.rows,
                                    cols=self.cols, area_px=self.area_px,
                                    class_probs=self.class_probs, mean_prob=self.mean_prob,
                                    labels=self.labels, ext=np.asarray(self.ext, np.int64))
        atomic_write(path, write)

    @classmethod
    def load(cls, path) -> "BlockResult":
        with np.load(path) as z:
            return cls(index=int(z["index"]), probs=z["probs"], rows=z["rows"], cols=z["cols"],
                       area_px=z["area_px"], class_probs=z["class_probs"],
                       mean_prob=z["mean_prob"], labels=z["labels"],
                       ext=tuple(int(v) for v in z["ext"]))


def process_block(k: int, plan: SlidePlan, grid_reader: ModelGridReader, model,
                  opts: SlideOptions) -> BlockResult:
    """Network, objects and classes of block ``k`` (see the module docstring)."""
    from vnumba.analysis.classes import nucleus_class_probs, nucleus_probability
    from vnumba.analysis.objects import extraction_pixels, label_objects

    (r0, r1, c0, c1), (wr0, wr1, wc0, wc1) = plan.blocks[k]
    er0, er1, ec0, ec1 = plan.extended((r0, r1, c0, c1))
    img = grid_reader.read(wr0, wr1, wc0, wc1)
    _, m = apply_window(model, img, plan.multiple)
    m = np.asarray(m, np.float32)
    maps = m if m.ndim == 3 else m[None]
    maps = maps[:, er0 - wr0:er1 - wr0, ec0 - wc0:ec1 - wc0]
    prob = nucleus_probability(maps) if maps.shape[0] > 1 else maps[0]
    h, amin = extraction_pixels(plan.model_mpp, opts.split_um, opts.min_area_um2)
    lab = label_objects(np.ascontiguousarray(prob, np.float32), opts.threshold, h, amin)
    n = int(lab.max())
    if n:
        idx = np.arange(1, n + 1)
        cy, cx = (np.asarray(v, np.float64) for v in
                  zip(*ndi.center_of_mass(np.ones_like(lab, np.float32), lab, idx)))
        cy, cx = cy + er0, cx + ec0
        # a nucleus belongs to the block holding its centroid: every one counted once
        own = (cy >= r0) & (cy < r1) & (cx >= c0) & (cx < c1)
        keep = idx[own]
        remap = np.zeros(n + 1, np.int32)
        remap[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
        lab = remap[lab]
        cy, cx = cy[own], cx[own]
    else:
        keep = np.zeros(0, np.int64)
        cy = cx = np.zeros(0)
    ids = np.arange(1, keep.size + 1)
    area = np.bincount(lab.ravel(), minlength=keep.size + 1)[1:].astype(np.int64)
    if keep.size:
        _, cp = nucleus_class_probs(lab, maps, ids)
        mp = ndi.mean(prob, lab, ids).astype(np.float64)
    else:
        cp = np.zeros((0, maps.shape[0]))
        mp = np.zeros(0)
    core = maps[:, r0 - er0:r1 - er0, c0 - ec0:c1 - ec0]
    probs = np.clip(np.rint(core * 255.0), 0, 255).astype(np.uint8)
    return BlockResult(index=k, probs=probs, rows=cy, cols=cx, area_px=area, class_probs=cp,
                       mean_prob=np.asarray(mp, np.float64), labels=lab.astype(np.int32),
                       ext=(er0, er1, ec0, ec1))


# ----------------------------------------------------------------------------- all blocks
@dataclass
class NucleusTable:
    """Every nucleus of a slide, in block order.

    Attributes
    ----------
    x, y : ndarray float64 (n,)
        Centroids in level-0 pixels (x = column).
    area_um2 : ndarray float64 (n,)
    class_probs : ndarray float64 (n, C_m)
    classes : ndarray of str (n,)
        Argmax class names (one-channel models: the model's class).
    block : ndarray int64 (n,)
        Block of each nucleus; ``local`` its label there.
    """

    x: np.ndarray
    y: np.ndarray
    area_um2: np.ndarray
    class_probs: np.ndarray
    mean_prob: np.ndarray
    classes: np.ndarray
    block: np.ndarray
    local: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)

    def subset(self, keep) -> "NucleusTable":
        """The nuclei where ``keep`` (bool (n,)) is True, in the same order."""
        keep = np.asarray(keep, bool)
        return NucleusTable(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


def on_tissue(tissue, x, y) -> np.ndarray:
    """Whether level-0 points ``(x, y)`` lie on the tissue mask (bool (n,)); True everywhere
    without a mask.  Detections on glass (dust, pen marks, the network's false positives in
    the background of a block that holds tissue) are not nuclei of the section."""
    x = np.asarray(x, np.float64)
    if tissue is None or x.size == 0:
        return np.ones(x.size, bool)
    m = tissue.mask
    j = np.clip(((x + 0.5) / tissue.downsample).astype(np.int64), 0, m.shape[1] - 1)
    i = np.clip(((np.asarray(y, np.float64) + 0.5) / tissue.downsample).astype(np.int64), 0,
                m.shape[0] - 1)
    return m[i, j]


def slide_key(path, plan: SlidePlan, model, opts: SlideOptions) -> str:
    """Identity of a run (slide file, plan, model parameters, options) for ``--resume``."""
    st = os.stat(path)
    h = hashlib.sha256()
    h.update(json.dumps({"path": os.path.abspath(path), "size": st.st_size,
                         "mtime": int(st.st_mtime), "level": plan.level, "region": plan.region,
                         "grid": plan.grid, "mpp0": plan.mpp0,
                         "opts": {k: v for k, v in asdict(opts).items() if k != "device"}},
                        sort_keys=True, default=str).encode())
    for k in sorted(model.params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(model.params[k]).tobytes())
    return h.hexdigest()[:32]


#: Readers a Dask worker has opened, by (slide path, --mpp): opened once per worker and kept.
_WORKER_READERS: dict = {}


def _remote_block(shared, k):
    """Task of :func:`run_blocks` on another process (vnumba.executor): block ``k`` read by the
    worker itself from the slide's path (never sent by the driver)."""
    path, mpp, plan, norm, model, opts = shared
    reader = _WORKER_READERS.get((path, mpp))
    if reader is None:
        from vnumba.io.slides import open_slide
        reader = _WORKER_READERS[(path, mpp)] = open_slide(path, mpp=mpp)
    return k, process_block(k, plan, ModelGridReader(reader, plan, norm), model, opts)


def run_blocks(plan: SlidePlan, grid_reader: ModelGridReader, model, opts: SlideOptions,
               work, tissue=None, resume: bool = False, key: str = "", progress=None,
               executor=None) -> dict:
    """Process every block with tissue, saving each result in ``work`` as it finishes.

    Parameters
    ----------
    work : path
        Work folder (created); ``block_K.npz`` per finished block, ``probs.u8`` the
        disk-backed probability array (C_m, Hm, Wm) uint8, ``state.json`` the run's key.
    tissue : object or None
        :func:`vnumba.analysis.tissue.tissue_mask` result; blocks without tissue are skipped.
    resume : bool
        Keep the finished blocks of an earlier run with the same ``key``.
    progress : callable or None
        ``progress(done_blocks, total_blocks, skipped)`` after each block.
    executor : vnumba.executor.Executor, optional
        Where the blocks run (``--scheduler``).  Other than in-process, every block is a task
        that reads its window from the slide's path (``grid_reader.reader.path``) on the
        worker; this process writes the results in the blocks' order, so the outputs are the
        same as in-process.

    Returns
    -------
    dict
        ``processed``, ``skipped``, ``reused`` (block counts) and ``done`` (indices).
    """
    from pathlib import Path

    work = Path(work)
    state_path = work / "state.json"
    names = model_mask_classes(model)
    C = len(names) if names else 1
    Hm, Wm = plan.grid
    if work.exists() and not resume:
        shutil.rmtree(work)
    if work.exists():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("key") != key:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not state_path.exists():
        from vnumba.io.outputs import atomic_write_text
        atomic_write_text(state_path, json.dumps({"key": key, "grid": [Hm, Wm], "channels": C}))
    pm_path = work / "probs.u8"
    mode = "r+" if pm_path.exists() else "w+"
    probs = disk_array(pm_path, np.uint8, (C, Hm, Wm), mode)  # a full disk: OSError, not SIGBUS
    processed = skipped = reused = 0
    done = []
    total = len(plan.blocks)
    # What each block needs, decided here (cheap): reuse, skip (no tissue) or process.
    todo, step = [], {}
    for k, (block, _) in enumerate(plan.blocks):
        if (work / f"block_{k}.npz").exists():
            step[k] = "reuse"
            continue
        er0, er1, ec0, ec1 = plan.extended(block)
        has = True
        if tissue is not None:
            from vnumba.analysis.tissue import tile_tissue_fraction
            fpx = plan.level0_per_model     # level-0 box of the extended block
            x0 = plan.region[0] + int(ec0 * fpx)
            y0 = plan.region[1] + int(er0 * fpx)
            frac = tile_tissue_fraction(tissue, x0, y0,
                                        max(1, int(round((ec1 - ec0) * fpx))),
                                        max(1, int(round((er1 - er0) * fpx))))
            has = frac >= opts.min_tissue and frac > 0
        step[k] = "process" if has else "skip"
        if has:
            todo.append(k)
    if executor is None or executor.in_process:
        results = ((k, process_block(k, plan, grid_reader, model, opts)) for k in todo)
    else:
        src = grid_reader.reader
        results = executor.map(_remote_block, todo, shared=(
            str(src.path), src.given_mpp, plan, grid_reader.norm, model, opts))
    results = iter(results)
    for k in range(total):
        if step[k] == "reuse":
            reused += 1
            done.append(k)
        elif step[k] == "skip":
            skipped += 1
        else:
            kk, res = next(results)   # in the blocks' order, whoever computed them
            assert kk == k
            r0, r1, c0, c1 = plan.blocks[k][0]
            probs[:, r0:r1, c0:c1] = res.probs   # pwrite: the map is never in memory
            res.save(work / f"block_{k}.npz")
            processed += 1
            done.append(k)
        if progress is not None:
            progress(k + 1, total, skipped)
    probs.close()
    return {"processed": processed, "skipped": skipped, "reused": reused, "done": done}


def collect_nuclei(plan: SlidePlan, work, done, names) -> NucleusTable:
    """The per-block nuclei of ``work`` as one table (level-0 coordinates, µm²)."""
    from pathlib import Path

    work = Path(work)
    xs, ys, ar, cp, mp, bl, lo = [], [], [], [], [], [], []
    C = len(names) if names else 1
    for k in sorted(done):
        r = BlockResult.load(work / f"block_{k}.npz")
        x, y = plan.to_level0(r.rows, r.cols)
        xs.append(x)
        ys.append(y)
        ar.append(r.area_px * plan.model_mpp ** 2)
        cp.append(r.class_probs.reshape(-1, C))
        mp.append(r.mean_prob)
        bl.append(np.full(r.rows.size, k, np.int64))
        lo.append(np.arange(1, r.rows.size + 1, dtype=np.int64))
    cat = (lambda a, shape=(0,): np.concatenate(a) if a else np.zeros(shape))
    class_probs = cat(cp, (0, C)).reshape(-1, C)
    if names:
        classes = np.asarray(names, dtype=object)[np.argmax(class_probs, axis=1)] \
            if class_probs.shape[0] else np.zeros(0, object)
    else:
        classes = np.full(class_probs.shape[0], "nucleus", dtype=object)
    return NucleusTable(x=cat(xs), y=cat(ys), area_um2=cat(ar), class_probs=class_probs,
                        mean_prob=cat(mp), classes=classes, block=cat(bl).astype(np.int64),
                        local=cat(lo).astype(np.int64))

