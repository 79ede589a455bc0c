"""Apply a trained model to real images of any size.

Pipeline for one image ``NAME.ext``:

1. read it (PNG/JPEG/TIFF, 8/16-bit; :mod:`vnumba.io.images`) and check its channel count
   against the model's;
2. scale to [0, 1] and, for H&E models that record colour statistics, apply the Reinhard
   normalisation they were trained with;
3. if both the image's pixel size (``--mpp`` or TIFF metadata) and the model's are known,
   resample to the model's pixel size;
4. run the network tile by tile: each tile's output block is computed from a window that
   extends ``receptive_radius`` pixels beyond it (or to the image border), so every output
   pixel sees exactly the context it would see in one whole-image pass — the result does not
   depend on the tile size;
5. resample back, threshold, split touching objects (:mod:`vnumba.analysis.objects`) and write
   ``NAME_reconstruction.png``, ``NAME_mask.png`` (16-bit probabilities), ``NAME_overlay.png``,
   ``NAME_objects.csv`` and ``NAME_objects.geojson`` (QuPath detections).

A multi-class model (``config.n_mask == C_m > 1``, class names in ``meta["mask_classes"]``)
gives one map per class; they are tiled and resampled like the one-channel mask
(:attr:`Prediction.class_probs`), the nucleus probability :attr:`Prediction.mask` is their
maximum (:func:`vnumba.analysis.classes.nucleus_probability`), and every nucleus gets class
probabilities and a class (:mod:`vnumba.analysis.classes`), written as extra CSV columns,
per-feature QuPath classes, class-coloured outlines, ``NAME_mask_<class>.png`` per class
and ``NAME_classes.png`` (see :func:`write_prediction`).

Command line: ``python -m vnumba.predict IMAGE... [--model MODEL] --out DIR``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vnumba.io.images import (
    MAX_RESAMPLED_PIXELS,
    MPP_RANGE,
    ImageData,
    encode_mask16,
    float_to_uint,
    image_to_float,
    match_channels,
    write_png,
)

__all__ = [
    "Prediction", "tile_windows", "predict_array", "model_channels", "model_mpp",
    "model_mask_classes", "normalise_colours", "resample", "predict_image", "load_model_arg",
    "write_prediction", "scenario_class", "output_kinds", "DEFAULT_TILE",
]

#: Default output block edge of a tile, in pixels (the window adds the receptive radius).
DEFAULT_TILE = 512

def scenario_class(scenario) -> tuple[str, tuple]:
    """QuPath class name and colour for a scenario's target objects (:mod:`vnumba.scenarios`)."""
    from vnumba.scenarios import get

    s = get(scenario)
    return s.qupath_class, s.color


# ----------------------------------------------------------------------------- model info
def model_channels(model) -> int:
    """Channels the model expects (meta ``channels``, else the config's ``n_channels``)."""
    c = (getattr(model, "meta", None) or {}).get("channels")
    if c is None:
        c = getattr(model.config, "n_channels", None)
    if c is None:
        raise ValueError("model records no channel count (meta 'channels')")
    return int(c)


def model_mask_classes(model) -> tuple | None:
    """Class names of a multi-class model's mask channels, or None for a one-channel model.

    The channel count is ``model.config.n_mask`` (absent: one channel, unless
    ``meta["mask_classes"]`` names several); with more than one channel
    ``meta["mask_classes"]`` must name each, in channel order (e.g. ``tumour, immune,
    other``), with letters, digits, ``_`` or ``-`` (they become file names).
    """
    import re

    names = (getattr(model, "meta", None) or {}).get("mask_classes")
    n = getattr(getattr(model, "config", None), "n_mask", None)
    if n is None:
        n = len(names) if isinstance(names, (list, tuple)) else 1
    n = int(n)
    if n <= 1:
        return None
    if not isinstance(names, (list, tuple)) or len(names) != n:
        raise ValueError(f"model has {n} mask channels but meta 'mask_classes' is {names!r} "
                         f"(expected {n} class names)")
    names = tuple(str(x) for x in names)
    bad = [x for x in names if not re.fullmatch(r"[A-Za-z0-9_-]+", x)]
    if bad or len(set(names)) != n:
        raise ValueError(f"meta 'mask_classes' must be {n} distinct names of letters, digits, "
                         f"'_' or '-', got {list(names)!r}")
    return names


def model_mpp(model) -> float | None:
    """Pixel size (µm/px) the model was trained at, or None if it records none."""
    v = (getattr(model, "meta", None) or {}).get("mpp")
    if v is None:
        return None
    v = float(v)
    if not v > 0:
        raise ValueError(f"model meta 'mpp' must be > 0, got {v}")
    return v


# ----------------------------------------------------------------------------- tiling
def tile_windows(H: int, W: int, tile: int, margin: int, multiple: int = 1):
    """Split an H×W image into output blocks and the input windows that feed them.

    Parameters
    ----------
    H, W : int
        Image size.
    tile : int
        Edge of the output blocks (the last row/column of blocks may be smaller).
    margin : int
        Context added on every side of a block, clipped at the image border.
    multiple : int
        Windows start at multiples of this and, unless they reach the image's end, have
        sizes that are multiples of it (for networks with pooling, e.g. the U-Net: the
        pooling grid then coincides with the whole image's).

    Returns
    -------
    list of (block, window)
        Each a tuple ``(r0, r1, c0, c1)`` of half-open row/column ranges; blocks partition
        the image and every window contains its block extended by at least ``margin`` (or
        to the border).
    """
    if tile < 1 or margin < 0 or H < 1 or W < 1 or multiple < 1:
        raise ValueError(f"invalid tiling: image {H}x{W}, tile {tile}, margin {margin}, "
                         f"multiple {multiple}")

    def span(a0, a1, n):
        w0 = (max(0, a0 - margin) // multiple) * multiple
        w1 = min(n, a1 + margin)
        return w0, min(n, w0 + -(-(w1 - w0) // multiple) * multiple)

    out = []
    for r0 in range(0, H, tile):
        r1 = min(r0 + tile, H)
        for c0 in range(0, W, tile):
            c1 = min(c0 + tile, W)
            out.append(((r0, r1, c0, c1), span(r0, r1, H) + span(c0, c1, W)))
    return out


def _size_multiple(model) -> int:
    return int(getattr(getattr(model, "config", None), "size_multiple", 1) or 1)


def predict_array(model, img: np.ndarray, tile: int = DEFAULT_TILE, margin: int | None = None,
                  progress=None):
    """Run ``model`` on an image tile by tile.

    Parameters
    ----------
    model
        Object with ``apply(u0) -> (u, m)`` on (N, C, H, W) float32 input and
        ``receptive_radius`` (int); for a multi-class model (:func:`model_mask_classes`)
        ``m`` is (N, C_m, H, W).  If ``model.config.size_multiple`` exists (U-Net),
        windows are aligned to it and those ending at the image's bottom/right border are
        mirrored up to a multiple (as :func:`vnumba.unet.network.pad_to_multiple` does), the same
        for every tiling.
    img : ndarray, shape (H, W, C), float32, values in [0, 1]
    tile : int
        Output block edge.
    margin : int, optional
        Context around each block; default ``model.receptive_radius``.  Smaller values make
        the result depend on the tiling (only useful to demonstrate exactly that).
    progress : callable, optional
        Called as ``progress(done, total)`` after each tile.

    Returns
    -------
    u : ndarray, shape (H, W, C), float32
        Reconstruction.
    m : ndarray, shape (H, W) or (C_m, H, W), float32
        Mask probabilities; one map per class for a multi-class model, tiled alike.
    """
    if not isinstance(img, np.ndarray) or img.ndim != 3:
        raise ValueError(f"img must be an (H, W, C) array, got {getattr(img, 'shape', type(img))}")
    if img.dtype != np.float32:
        raise TypeError(f"img must be float32, got {img.dtype}")
    if not np.all(np.isfinite(img)):
        raise ValueError("img contains NaN or inf")
    if img.size and (img.min() < 0.0 or img.max() > 1.0):
        raise ValueError(f"img values must lie in [0, 1], got [{img.min():g}, {img.max():g}]")
    if not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if margin is None:
        margin = int(model.receptive_radius)
    H, W, C = img.shape
    chw = np.ascontiguousarray(np.moveaxis(img, 2, 0))
    names = model_mask_classes(model)
    lead = () if names is None else (len(names),)
    u = np.empty((C, H, W), np.float32)
    m = np.empty(lead + (H, W), np.float32)
    mult = _size_multiple(model)
    wins = tile_windows(H, W, int(tile), int(margin), mult)
    for k, ((r0, r1, c0, c1), (wr0, wr1, wc0, wc1)) in enumerate(wins):
        u0 = np.ascontiguousarray(chw[None, :, wr0:wr1, wc0:wc1])
        ph, pw = (-u0.shape[2]) % mult, (-u0.shape[3]) % mult
        if ph or pw:
            if ph > u0.shape[2] or pw > u0.shape[3]:
                raise ValueError(f"image {H}x{W} too small for a network that needs sizes "
                                 f"in multiples of {mult}")
            u0 = np.ascontiguousarray(np.pad(u0, ((0, 0), (0, 0), (0, ph), (0, pw)),
                                             mode="symmetric"))
        uo, mo = model.apply(u0)
        uo, mo = np.asarray(uo), np.asarray(mo)
        if uo.shape != u0.shape or mo.shape != (1,) + lead + u0.shape[2:]:
            raise RuntimeError(f"model.apply returned shapes {uo.shape}, {mo.shape} for input "
                               f"{u0.shape}")
        u[:, r0:r1, c0:c1] = uo[0, :, r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0]
        m[..., r0:r1, c0:c1] = mo[0, ..., r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0]
        if progress is not None:
            progress(k + 1, len(wins))
    return np.ascontiguousarray(np.moveaxis(u, 0, 2)), m


# ----------------------------------------------------------------------------- pre/post
def normalise_colours(img: np.ndarray, model) -> np.ndarray:
    """Reinhard colour normalisation recorded with an H&E model; identity otherwise.

    Parameters
    ----------
    img : ndarray, shape (H, W, C), float32 in [0, 1]
    model
        ``meta["reinhard_mean"]`` / ``meta["reinhard_std"]`` (Lab statistics, 3 values each)
        switch it on.

    Returns
    -------
    ndarray, shape (H, W, C), float32 in [0, 1]
    """
    meta = getattr(model, "meta", None) or {}
    mean, std = meta.get("reinhard_mean"), meta.get("reinhard_std")
    if mean is None or std is None:
        return img
    if img.shape[2] != 3:
        raise ValueError("the model records Reinhard statistics but the image is not RGB")
    from vnumba.ops.color import reinhard_normalize
    out = reinhard_normalize(img.astype(np.float64), np.asarray(mean, np.float64),
                             np.asarray(std, np.float64))
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def resample(img: np.ndarray, shape) -> np.ndarray:
    """Bilinear resampling of an (H, W) or (H, W, C) float image to ``shape[:2]``.

    Downsampling is anti-aliased (Gaussian pre-filter), upsampling is not.
    """
    from skimage.transform import resize

    shape = tuple(int(s) for s in shape[:2])
    if tuple(img.shape[:2]) == shape:
        return img
    down = shape[0] < img.shape[0] or shape[1] < img.shape[1]
    out = resize(img, shape + img.shape[2:], order=1, mode="reflect", anti_aliasing=down,
                 preserve_range=True)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=img.dtype)


@dataclass
class Prediction:
    """Network output for one image, at the image's own resolution.

    Attributes
    ----------
    image : ndarray, shape (H, W, C), float32
        The input scaled to [0, 1] (before colour normalisation).
    reconstruction : ndarray, shape (H, W, C), float32
        ``u_T`` (in the model's colour space, i.e. after Reinhard normalisation for H&E).
    mask : ndarray, shape (H, W), float32
        ``m_T`` probabilities; for a multi-class model the nucleus probability, the maximum
        of :attr:`class_probs` over the classes (``mask > t`` is the union of the per-class
        masks ``class_probs[k] > t``).
    input_mpp, model_mpp : float or None
    scale : float
        Resampling factor applied before the network (1 = none).
    n_tiles : int
    seconds : float
    class_probs : ndarray, shape (C_m, H, W), float32, or None
        A multi-class model's per-class maps (tiled and resampled like the mask); None for a
        one-channel model.
    mask_classes : tuple of str or None
        Their class names, in channel order (``meta["mask_classes"]``).
    """

    image: np.ndarray
    reconstruction: np.ndarray
    mask: np.ndarray
    input_mpp: float | None
    model_mpp: float | None
    scale: float
    n_tiles: int
    seconds: float
    class_probs: np.ndarray | None = None
    mask_classes: tuple | None = None


def predict_image(model, image: ImageData | np.ndarray, mpp: float | None = None,
                  tile: int = DEFAULT_TILE, scale_mode: str = "dtype",
                  progress: Callable[[int, int], None] | None = None) -> Prediction:
    """Full pipeline for one image (steps 1–5 of the module docstring, without writing).

    Parameters
    ----------
    model
        See :func:`predict_array`; ``meta`` may carry ``mpp``, ``channels`` and Reinhard
        statistics.
    image : ImageData or ndarray (H, W, C) / (H, W)
        An :class:`ImageData` (its TIFF ``mpp`` is used unless ``mpp`` is given) or a raw
        array (uint8/uint16/float in [0, 1]).
    mpp : float, optional
        Pixel size of the image in µm/px; overrides the file's.
    tile : int
    scale_mode : {"dtype", "percentile"}
        See :func:`vnumba.io.images.image_to_float`.
    progress : callable, optional
        ``progress(done, total)`` per tile.

    Returns
    -------
    Prediction

    Examples
    --------
    A tiny untrained network on a 24x32 RGB image, at the model's pixel size, in 16-px tiles:

    >>> import numpy as np
    >>> from vnumba.analysis.inference import predict_image
    >>> from vnumba.io.models import Model
    >>> from vnumba.vn.config import ModelConfig
    >>> from vnumba.vn.model import init_params
    >>> cfg = ModelConfig(n_steps=1, nf_u=2, nf_m=1, ks_u=3, ks_m=3, ks=3)
    >>> model = Model("vn", cfg, init_params(cfg, np.random.default_rng(0)), {"mpp": 0.5})
    >>> image = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    >>> pred = predict_image(model, image, mpp=0.5, tile=16)
    >>> pred.mask.shape, pred.reconstruction.shape, pred.scale, pred.n_tiles
    ((24, 32), (24, 32, 3), 1.0, 4)
    >>> bool(((pred.mask >= 0) & (pred.mask <= 1)).all())
    True
    """
    t0 = time.perf_counter()
    if isinstance(image, ImageData):
        arr, path = image.array, image.path
        in_mpp = mpp if mpp is not None else image.mpp
    else:
        arr, path, in_mpp = np.asarray(image), "image", mpp
        if arr.ndim == 2:
            arr = arr[:, :, None]
    if in_mpp is not None and not (np.isfinite(float(in_mpp))
                                   and MPP_RANGE[0] <= float(in_mpp) <= MPP_RANGE[1]):
        raise ValueError(f"{path}: pixel size {in_mpp} um/px is not plausible (expected "
                         f"{MPP_RANGE[0]:g} to {MPP_RANGE[1]:g})")
    arr = match_channels(arr, model_channels(model), path)
    x = image_to_float(arr, scale_mode, path)
    H, W = x.shape[:2]
    xn = normalise_colours(x, model)
    m_mpp = model_mpp(model)
    scale = 1.0
    if in_mpp is not None and m_mpp is not None:
        scale = float(in_mpp) / m_mpp
    shape = (max(1, round(H * scale)), max(1, round(W * scale))) if abs(scale - 1.0) > 1e-3 \
        else (H, W)
    least = max(MIN_SIDE, _size_multiple(model))
    if min(shape) < least:
        at = "" if shape == (H, W) else f" ({shape[1]}x{shape[0]} px at the model's {m_mpp:g} um/px)"
        raise ValueError(f"{path}: image of {W}x{H} px{at} is too small: the network needs at "
                         f"least {least} px a side")
    if abs(scale - 1.0) > 1e-3:
        if shape[0] * shape[1] > MAX_RESAMPLED_PIXELS:
            # Checked before allocating: a wrong pixel size must not ask for terabytes.
            raise ValueError(f"{path}: resampling {W}x{H} px from {in_mpp:g} to the model's "
                             f"{m_mpp:g} um/px would give {shape[1]}x{shape[0]} px (more than "
                             f"{MAX_RESAMPLED_PIXELS} pixels); check the pixel size")
        xs = resample(xn, shape)
    else:
        scale, xs = 1.0, xn
    names = model_mask_classes(model)
    u, m = predict_array(model, xs, tile=tile, progress=progress)
    if xs.shape[:2] != (H, W):
        u = resample(u, (H, W))
        if m.ndim == 3:   # (C_m, H, W): every class map resampled alike
            m = np.ascontiguousarray(np.moveaxis(resample(np.moveaxis(m, 0, 2), (H, W)), 2, 0))
        else:
            m = resample(m, (H, W))
    class_probs = None
    if names is not None:
        from vnumba.analysis.classes import nucleus_probability
        class_probs, m = m, nucleus_probability(m)
    n_tiles = len(tile_windows(xs.shape[0], xs.shape[1], int(tile), int(model.receptive_radius),
                               _size_multiple(model)))
    return Prediction(image=x, reconstruction=u, mask=m,
                      input_mpp=None if in_mpp is None else float(in_mpp), model_mpp=m_mpp,
                      scale=scale, n_tiles=n_tiles, seconds=time.perf_counter() - t0,
                      class_probs=class_probs, mask_classes=names)


#: Smallest image side (pixels at the model's pixel size) prediction takes: below it an image
#: holds no whole nucleus and the symmetric padding to the network's size multiple fails.
MIN_SIDE = 8

#: The files written per input NAME: NAME_<kind> (see :func:`write_prediction`).
OUTPUT_KINDS = ("reconstruction.png", "mask.png", "overlay.png", "objects.csv", "objects.geojson")


def output_kinds(mask_classes=None) -> tuple:
    """:data:`OUTPUT_KINDS`, plus ``mask_<class>.png`` per class and ``classes.png`` for a
    multi-class model (``mask_classes``: its class names, :func:`model_mask_classes`)."""
    if not mask_classes:
        return OUTPUT_KINDS
    return OUTPUT_KINDS + tuple(f"mask_{n}.png" for n in mask_classes) + ("classes.png",)


def write_prediction(out_dir, name: str, pred: Prediction, threshold: float = 0.5,
                     split_h: float = 2.0, min_area: int = 20, scenario=None,
                     bit_depth: int = 8, object_filter=None, filter_image=None) -> dict:
    """Write the five output files of one image (more for a multi-class prediction).

    A prediction with per-class maps (``pred.class_probs``, ``pred.mask_classes``) is
    classified per nucleus (:mod:`vnumba.analysis.classes`; nuclei = objects of
    ``pred.mask``, the union): the CSV gets ``class, p_<class>...``, each GeoJSON feature
    its class's QuPath class and colour and the probabilities among its measurements, the
    overlay draws every outline in its class colour (:data:`vnumba.scenarios.MASK_CLASSES`),
    ``NAME_mask.png`` holds the nucleus probability (maximum over the classes), and two kinds
    of files are added: ``NAME_mask_<class>.png`` (each class map, 16-bit like the mask) and
    ``NAME_classes.png`` (8-bit class map: 0 background, ``k + 1`` for the nuclei of channel
    ``k``, i.e. 1 tumour, 2 immune, 3 other in the usual order).

    Parameters
    ----------
    out_dir : path-like
    name : str
        Output file stem (input file name without suffix).
    pred : Prediction
    threshold, split_h, min_area
        Object extraction, see :func:`vnumba.analysis.objects.label_objects`.
    scenario : str, optional
        Names the QuPath class of the detections.
    bit_depth : {8, 16}
        Of the reconstruction PNG (use the input's).
    object_filter : vnumba.analysis.objfilter.ObjectFilter, optional
        Drops the objects it rejects from the overlay, CSV and GeoJSON (the mask PNG stays the
        network's); needs ``filter_image`` (the colour-normalised input) and a known pixel size.

    Returns
    -------
    dict
        ``paths`` (name -> Path), ``n_objects``, ``labels`` (ndarray int32 (H, W)),
        ``table`` (:class:`vnumba.analysis.objects.ObjectTable`, with ``classes`` for a
        multi-class prediction).
    """
    from vnumba.analysis.objects import label_objects, object_table, write_objects_csv, write_objects_geojson
    from vnumba.analysis.plots import overlay_contours

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = label_objects(pred.mask, threshold, h=split_h, min_area=min_area)
    f_mpp = pred.input_mpp or pred.model_mpp
    if object_filter is not None and f_mpp:
        labels = object_filter.apply(filter_image, pred.mask, labels, f_mpp)
    multi = pred.class_probs is not None
    table = object_table(labels, pred.mask, mpp=pred.input_mpp,
                         class_probs=pred.class_probs if multi else None,
                         class_names=pred.mask_classes if multi else None)
    cls_name, color = scenario_class(scenario)
    paths = {k: out_dir / f"{name}_{k}{ext}" for k, ext in
             (("reconstruction", ".png"), ("mask", ".png"), ("overlay", ".png"),
              ("objects", ".csv"))}
    paths["geojson"] = out_dir / f"{name}_objects.geojson"
    write_png(paths["reconstruction"],
              float_to_uint(pred.reconstruction, np.uint16 if bit_depth == 16 else np.uint8))
    write_png(paths["mask"], encode_mask16(pred.mask))
    lut = None
    if multi:
        from vnumba.analysis.classes import class_map
        from vnumba.scenarios import mask_class
        cols = np.array([mask_class(n).color for n in pred.mask_classes], np.uint8)
        lut = np.zeros((int(labels.max()) + 1, 3), np.uint8)
        lut[table.classes.ids] = cols[table.classes.index]
        for k, n in enumerate(pred.mask_classes):
            paths[f"mask_{n}"] = out_dir / f"{name}_mask_{n}.png"
            write_png(paths[f"mask_{n}"], encode_mask16(pred.class_probs[k]))
        paths["classes"] = out_dir / f"{name}_classes.png"
        write_png(paths["classes"], class_map(labels, table.classes))
    write_png(paths["overlay"], overlay_contours(pred.image, labels, label_colors=lut))
    write_objects_csv(paths["objects"], table)
    write_objects_geojson(paths["geojson"], labels, table, class_name=cls_name, color=color,
                          id_seed=name)
    return {"paths": paths, "n_objects": len(table), "labels": labels, "table": table}


def load_model_arg(model_arg, scenario: str):
    """The model named on the command line, or the scenario's shipped default."""
    from vnumba.io.models import load_model
    return load_model(model_arg if model_arg is not None else scenario)
