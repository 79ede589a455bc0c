"""Reference bundle for scenario 3: real nucleus patches, texture patches and colour statistics.

Scenario 3 of Effland et al. (2019) mixes real texture into synthetic geometry: tumour nuclei
are cut out of annotated H&E images and pasted with a random rotation, and tumour and immune
cells are textured with small square patches taken from cells of the same type, grouped into
three colour cohorts.  This module builds that material once from annotated images and stores
it in an HDF5 *reference bundle*; the scenario-3 generator (:mod:`synth.scenario3`) reads it.

The project never ships these pixels: a bundle is built locally, e.g. ::

    python -m synth reference ../shared/data/real/he_melanoma_puma -o reference.h5 --mpp 0.24

Input format (see ``shared/data/real/README.md``): ``NAME.png`` (RGB uint8) with
``NAME_labels.npz`` beside it holding ``instances`` (int, 0 = background, 1..N nucleus ids) and
``classes`` (uint8; 1 = tumour nucleus, 2 = immune nucleus, 3 = other nucleus).

What is extracted, after Reinhard normalisation of every image to one reference image:

(a) **Tumour-nucleus patches**: the bounding box of each tumour nucleus that does not touch the
    image border, as RGBA; alpha is 255 exactly on the nucleus and 0 elsewhere, RGB is zero
    where alpha is zero (premultiplied, so that rotation does not bleed neighbouring colours in).
(b) **Texture patches** of ``patch_size`` x ``patch_size`` pixels lying wholly inside one cell:
    *tumour* patches from the cytoplasm of tumour cells (only nuclei are annotated, so a tumour
    cell is approximated by the non-nucleus pixels within ``cytoplasm_width`` of a tumour
    nucleus whose nearest nucleus it is), *immune* patches from inside immune nuclei (an immune
    cell at this scale is almost all nucleus).  Each set is split into ``n_cohorts`` cohorts of
    (near) equal size by the position of the patch's mean Lab colour along the first principal
    axis of all patch means (cohort 0 = darkest), as in the article's Table 1 (three cohorts of
    55 / 60 patches).
(c) **Colour statistics** (mean and covariance of RGB in [0, 1]) of labelled classes
    (tumour nuclei, immune nuclei, tumour cytoplasm) and of classes found by simple colour rules
    on non-nucleus pixels: *background* (bright, L* >= ``background_min_lightness``), *vessel*
    (red-orange hue, as erythrocytes), *stroma* (eosin-dominant pink hue).  A class with fewer
    than ``min_colour_pixels`` pixels is stored with ``n_pixels`` and NaN statistics, and the
    generator falls back on the scenario script's values.

Every patch records its provenance: source image index (into ``sources``), instance id and
bounding box ``(row0, col0, row1, col1)`` (end-exclusive) in the source image.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from vnumba.io.labels import labels_header, read_labels
from vnumba.io.outputs import check_distinct
from vnumba.ops.fields import Checked, NonNegativeInt, PositiveFloat, PositiveInt, bounded

__all__ = [
    "FORMAT",
    "VERSION",
    "TUMOUR_CLASS",
    "IMMUNE_CLASS",
    "ExtractionConfig",
    "ColourStats",
    "TextureSet",
    "NucleusSet",
    "NUCLEUS_SETS",
    "ReferenceBundle",
    "LabelledImage",
    "find_labelled_images",
    "read_labelled_image",
    "build_reference",
    "save_reference",
    "load_reference",
]

#: Value of the ``format`` attribute of a reference bundle (guards against foreign files).
FORMAT = "vnumba-synth-reference"
#: Version of the bundle layout written by :func:`save_reference` (2 added the look-alike
#: nucleus sets ``nuclei_immune`` / ``nuclei_other``; version-1 bundles still load, with those
#: sets empty).
VERSION = 2
_READABLE_VERSIONS = (1, 2)

TUMOUR_CLASS = 1
IMMUNE_CLASS = 2
OTHER_CLASS = 3

#: Look-alike nucleus sets cut out besides the tumour nuclei: set name -> labelled class.
#: Scenario 3 pastes them as immune cells, lymphocyte aggregates, fibroblasts and endothelium;
#: they never enter the target mask.
NUCLEUS_SETS = {"immune": IMMUNE_CLASS, "other": OTHER_CLASS}

#: Texture sets, in the order they are stored.
TEXTURE_KINDS = ("tumour", "immune")
#: Colour classes, in the order they are stored.
COLOUR_CLASSES = ("background", "stroma", "vessel", "tumour_nucleus", "immune_nucleus",
                  "tumour_cytoplasm")


@dataclass(frozen=True)
class ExtractionConfig(Checked):
    """Parameters of :func:`build_reference`.

    Attributes
    ----------
    patch_size : int
        Side of the square texture patches in pixels (source scale).
    max_patches_per_cell : int
        At most this many non-overlapping texture patches are taken from one cell, so that a
        few large cells do not dominate a cohort.
    n_cohorts : int
        Number of colour cohorts per texture set (article: 3).
    min_nucleus_area : int
        Tumour nuclei with fewer pixels are not cut out (annotation slivers).
    min_lookalike_area : int
        The same for the look-alike sets (:data:`NUCLEUS_SETS`); lymphocytes are small.
    cytoplasm_width : float
        Pixels farther than this from every tumour nucleus are not counted as tumour cytoplasm.
    background_min_lightness : float
        CIE L* from which a non-nucleus pixel counts as background (empty slide).
    vessel_hue : tuple of float
        Lab hue angle interval (degrees, ``atan2(b*, a*)``) of vessel (erythrocyte) pixels.
    vessel_min_chroma : float
        Minimum Lab chroma of vessel pixels.
    stroma_hue : tuple of float
        Lab hue angle interval of eosin-dominant stroma / connective tissue pixels (pink, redder
        than the purple cytoplasm of tumour cells).
    min_colour_pixels : int
        Colour classes with fewer pixels get NaN statistics.
    seed : int
        Seed of the (deterministic) choice of texture patches within a cell.
    """

    patch_size: PositiveInt = 8
    max_patches_per_cell: PositiveInt = 4
    n_cohorts: PositiveInt = 3
    min_nucleus_area: PositiveInt = 40
    min_lookalike_area: PositiveInt = 30
    cytoplasm_width: PositiveFloat = 12.0
    background_min_lightness: float = bounded(70.0, ge=0, le=100)
    vessel_hue: tuple = (-20.0, 60.0)
    vessel_min_chroma: PositiveFloat = 20.0
    stroma_hue: tuple = (-30.0, -20.0)
    min_colour_pixels: PositiveInt = 1000
    seed: NonNegativeInt = 0

    def __post_init__(self):
        super().__post_init__()
        for name in ("vessel_hue", "stroma_hue"):
            v = tuple(getattr(self, name))
            if len(v) != 2 or not (-180 <= v[0] < v[1] <= 180):
                raise ValueError(f"ExtractionConfig.{name} must be (lo, hi) degrees with "
                                 f"-180 <= lo < hi <= 180, got {v!r}")
            object.__setattr__(self, name, (float(v[0]), float(v[1])))


@dataclass(frozen=True)
class ColourStats:
    """Colour statistics of one pixel class, RGB in [0, 1] after normalisation.

    Attributes
    ----------
    mean : ndarray of float64, shape (3,)
    cov : ndarray of float64, shape (3, 3)
        NaN when ``n_pixels < min_colour_pixels``.
    n_pixels : int
    rule : str
        How the pixels were selected (for the record).
    """

    mean: np.ndarray
    cov: np.ndarray
    n_pixels: int
    rule: str

    @property
    def valid(self) -> bool:
        """True when the statistics were estimated (enough pixels)."""
        return bool(np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.cov)))


@dataclass(frozen=True)
class TextureSet:
    """Square texture patches of one cell type.

    Attributes
    ----------
    patches : ndarray of uint8, shape (N, P, P, 3)
    cohort : ndarray of int8, shape (N,)
        Colour cohort ``0 .. n_cohorts-1`` of each patch (0 = darkest).
    source : ndarray of int32, shape (N,)
        Index into :attr:`ReferenceBundle.sources`.
    instance : ndarray of int32, shape (N,)
        Nucleus instance id (in the source label image) of the cell the patch comes from.
    bbox : ndarray of int32, shape (N, 4)
        ``(row0, col0, row1, col1)`` of the patch in the source image, end-exclusive.
    """

    patches: np.ndarray
    cohort: np.ndarray
    source: np.ndarray
    instance: np.ndarray
    bbox: np.ndarray

    def __len__(self):
        return int(self.patches.shape[0])

    def cohort_patches(self, k: int) -> np.ndarray:
        """Patches of cohort ``k``, shape (n_k, P, P, 3) uint8."""
        return self.patches[self.cohort == k]


@dataclass(frozen=True)
class NucleusSet:
    """Whole-nucleus patches of one labelled class (premultiplied RGBA, like the tumour nuclei).

    Attributes
    ----------
    patches : tuple of ndarray
        Each uint8 of shape (h, w, 4); alpha 255 exactly on the nucleus.
    source, instance : ndarray of int32, shape (M,)
        Source image index (into :attr:`ReferenceBundle.sources`) and instance id.
    bbox : ndarray of int32, shape (M, 4)
        ``(row0, col0, row1, col1)`` in the source image, end-exclusive.
    """

    patches: tuple
    source: np.ndarray
    instance: np.ndarray
    bbox: np.ndarray

    def __len__(self):
        return len(self.patches)

    @staticmethod
    def empty() -> "NucleusSet":
        return NucleusSet((), np.zeros(0, np.int32), np.zeros(0, np.int32),
                          np.zeros((0, 4), np.int32))


@dataclass(frozen=True)
class ReferenceBundle:
    """Everything scenario 3 takes from real images (see the module docstring).

    Attributes
    ----------
    nuclei : tuple of ndarray
        Tumour-nucleus patches, each uint8 of shape (h, w, 4), premultiplied RGBA.
    nuclei_source, nuclei_instance : ndarray of int32, shape (M,)
    nuclei_bbox : ndarray of int32, shape (M, 4)
    textures : dict of str to TextureSet
        Keys ``"tumour"`` and ``"immune"``.
    colours : dict of str to ColourStats
        Keys :data:`COLOUR_CLASSES`.
    sources : tuple of str
        Source image paths as given; ``source_sha256`` their content hashes.
    source_sha256 : tuple of str
    ref_image : str
        Image whose Lab mean / std all images were normalised to.
    ref_lab_mean, ref_lab_std : ndarray of float64, shape (3,)
    mpp : float
        Pixel size of the sources in µm (NaN if not given).
    config : ExtractionConfig
    nucleus_sets : dict of str to NucleusSet
        Look-alike nuclei, keys :data:`NUCLEUS_SETS` (empty sets for a version-1 bundle).
    """

    nuclei: tuple
    nuclei_source: np.ndarray
    nuclei_instance: np.ndarray
    nuclei_bbox: np.ndarray
    textures: dict
    colours: dict
    sources: tuple
    source_sha256: tuple
    ref_image: str
    ref_lab_mean: np.ndarray
    ref_lab_std: np.ndarray
    mpp: float
    config: ExtractionConfig = field(default_factory=ExtractionConfig)
    nucleus_sets: dict = field(default_factory=lambda: {k: NucleusSet.empty()
                                                        for k in NUCLEUS_SETS})

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def n_cohorts(self) -> int:
        return self.config.n_cohorts

    def fingerprint(self) -> str:
        """SHA-256 (hex) of every pixel and cohort assignment: two bundles that generate the
        same images have the same fingerprint (for provenance records of datasets)."""
        h = hashlib.sha256()
        for p in self.nuclei:
            h.update(np.asarray(p.shape, np.int64).tobytes())
            h.update(np.ascontiguousarray(p).tobytes())
        for kind in TEXTURE_KINDS:
            ts = self.textures[kind]
            h.update(kind.encode())
            h.update(np.ascontiguousarray(ts.patches).tobytes())
            h.update(np.ascontiguousarray(ts.cohort, np.int8).tobytes())
        for name in COLOUR_CLASSES:
            cs = self.colours[name]
            h.update(np.asarray(cs.mean, np.float64).tobytes())
            h.update(np.asarray(cs.cov, np.float64).tobytes())
        h.update(np.float64(self.mpp).tobytes())
        # Only non-empty look-alike sets enter the hash, so a version-1 bundle keeps its
        # fingerprint (and datasets made from it their provenance record).
        for kind, ns in sorted(self.nucleus_sets.items()):
            if len(ns):
                h.update(f"nuclei_{kind}".encode())
                for p in ns.patches:
                    h.update(np.asarray(p.shape, np.int64).tobytes())
                    h.update(np.ascontiguousarray(p).tobytes())
        return h.hexdigest()

    def summary(self) -> str:
        """One-paragraph human-readable description."""
        lines = [f"reference bundle: {len(self.sources)} source image(s), "
                 f"reference image {self.ref_image}, mpp {self.mpp:g}",
                 f"  fingerprint {self.fingerprint()[:16]}",
                 f"  tumour-nucleus patches: {len(self.nuclei)}"]
        for kind, ns in self.nucleus_sets.items():
            lines.append(f"  {kind}-nucleus patches: {len(ns)}")
        for kind, ts in self.textures.items():
            counts = np.bincount(ts.cohort.astype(np.int64), minlength=self.n_cohorts)
            lines.append(f"  {kind} texture patches ({self.patch_size}x{self.patch_size}): "
                         f"{len(ts)}, per cohort {counts.tolist()}")
        for name, cs in self.colours.items():
            m = np.array2string(cs.mean, precision=3) if cs.valid else "n/a"
            lines.append(f"  colour {name}: {cs.n_pixels} px, mean RGB {m}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Reading annotated images


@dataclass(frozen=True)
class LabelledImage:
    """One annotated H&E image: ``rgb`` uint8 (H, W, 3), ``instances`` int32 (H, W), ``classes``
    uint8 (H, W); ``path`` of the image and ``labels_path`` of its ``_labels.npz``."""

    path: Path
    labels_path: Path
    rgb: np.ndarray
    instances: np.ndarray
    classes: np.ndarray


def labels_path_for(image_path) -> Path:
    """``NAME_labels.npz`` beside ``NAME.png``."""
    p = Path(image_path)
    return p.with_name(p.stem + "_labels.npz")


def find_labelled_images(paths) -> list:
    """Expand image files and folders into a sorted list of image paths.

    A folder contributes every ``*.png`` in it or below it that has a ``_labels.npz`` beside
    it (an image without labels in a folder is skipped; so, in :func:`build_reference`, is
    one from a folder whose labels have no ``classes`` or that is not RGB uint8, e.g. CPM-15
    and fluorescence images under ``shared/data/real``); a file given explicitly must exist
    and be usable.

    Raises
    ------
    FileNotFoundError
        For a path that does not exist, or when nothing labelled was found.
    """
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.png") if labels_path_for(q).is_file())
            if not found:
                raise FileNotFoundError(f"{p}: no NAME.png with NAME_labels.npz beside it")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder")
    if not out:
        raise FileNotFoundError("no input images given")
    return out


def _read_rgb(path: Path) -> np.ndarray:
    from vnumba.io.images import read_image

    # The one image reader: size checked before decoding, an opaque alpha dropped, a real
    # one (a cut-out) refused, multi-page TIFFs refused (vnumba.io.images).
    img = read_image(path).array
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{path}: expected an RGB image (H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 RGB (H&E brightfield), got {img.dtype}")
    return np.ascontiguousarray(img)


def read_labelled_image(image_path) -> LabelledImage:
    """Read ``NAME.png`` and ``NAME_labels.npz`` and validate them against each other.

    Raises
    ------
    FileNotFoundError
        When the image or its labels file is missing.
    ValueError
        When the labels file is not a readable ``.npz``, lacks ``instances`` or ``classes``,
        has non-integer arrays, shapes that differ from the image, negative ids, or when the
        image is not RGB uint8.
    """
    image_path = Path(image_path)
    if not image_path.is_file():
        raise FileNotFoundError(f"{image_path}: image file not found")
    lp = labels_path_for(image_path)
    if not lp.is_file():
        raise FileNotFoundError(f"{lp}: labels file not found (expected beside image "
                                f"{image_path.name}, keys 'instances' and 'classes')")
    rgb = _read_rgb(image_path)
    inst, cls = read_labels(lp, shape=rgb.shape[:2], require_classes=True)
    return LabelledImage(image_path, lp, rgb, inst, cls)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# Colour normalisation


def _lab_stats(rgb: np.ndarray):
    """Lab mean and std of an RGB uint8 image (both shape (3,))."""
    from synth.color import lab_stats

    return lab_stats(rgb)


def _normalise(rgb: np.ndarray, ref_mean, ref_std) -> np.ndarray:
    """Reinhard-normalise ``rgb`` (uint8) to the given Lab statistics, returns uint8."""
    from synth.color import reinhard_normalize

    out = reinhard_normalize(rgb, ref_mean, ref_std)
    out = np.asarray(out)
    if out.dtype != np.uint8:
        out = np.clip(np.rint(out * 255.0 if out.dtype.kind == "f" else out), 0, 255)
        out = out.astype(np.uint8)
    return out


def _rgb_to_lab(rgb_u8: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(rgb_u8)


# ----------------------------------------------------------------------------------------
# Extraction


def _instance_classes(inst: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Majority class per instance id; index 0 (background) is 0."""
    n = int(inst.max(initial=0))
    lab = inst.ravel().astype(np.int64)
    c = cls.ravel().astype(np.int64)
    counts = np.zeros((n + 1, 256), dtype=np.int64)
    np.add.at(counts, (lab, c), 1)
    out = counts.argmax(axis=1).astype(np.uint8)
    out[0] = 0
    return out


def _nucleus_patches(img: LabelledImage, rgb: np.ndarray, inst_cls, cfg, src_idx,
                     klass: int = TUMOUR_CLASS, min_area: int | None = None):
    """RGBA patches of the nuclei of class ``klass`` in one image (module docstring, (a))."""
    min_area = cfg.min_nucleus_area if min_area is None else min_area
    H, W = img.instances.shape
    patches, prov_inst, prov_bbox = [], [], []
    slices = ndi.find_objects(img.instances)
    for i, sl in enumerate(slices, start=1):
        if sl is None or inst_cls[i] != klass:
            continue
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        # A nucleus cut by the tile border would be pasted with a straight edge.
        if r0 == 0 or c0 == 0 or r1 == H or c1 == W:
            continue
        m = img.instances[sl] == i
        if int(m.sum()) < min_area:
            continue
        rgba = np.zeros(m.shape + (4,), dtype=np.uint8)
        rgba[..., :3] = np.where(m[..., None], rgb[sl], 0)
        rgba[..., 3] = np.where(m, 255, 0)
        patches.append(rgba)
        prov_inst.append(i)
        prov_bbox.append((r0, c0, r1, c1))
    n = len(patches)
    return (patches, np.full(n, src_idx, np.int32), np.asarray(prov_inst, np.int32).reshape(n),
            np.asarray(prov_bbox, np.int32).reshape(n, 4))


def _tumour_cell_map(inst: np.ndarray, inst_cls: np.ndarray, width: float) -> np.ndarray:
    """Approximate tumour-cell cytoplasm: label map (instance id of the owning tumour nucleus)."""
    nuc = inst > 0
    if not nuc.any():
        return np.zeros_like(inst)
    dist, (ri, ci) = ndi.distance_transform_edt(~nuc, return_indices=True)
    owner = inst[ri, ci]
    cell = np.where(~nuc & (dist <= width) & (inst_cls[owner] == TUMOUR_CLASS), owner, 0)
    return cell.astype(np.int32)


def _square_patches(label_map: np.ndarray, rgb: np.ndarray, cfg, rng, src_idx):
    """Up to ``max_patches_per_cell`` non-overlapping P x P squares wholly inside each label."""
    P = cfg.patch_size
    H, W = label_map.shape
    if H < P or W < P:
        return _empty_texture(P, 0)
    # A window lies inside one label iff min == max == label over the window.
    win = np.lib.stride_tricks.sliding_window_view(label_map, (P, P))
    lo = win.min(axis=(2, 3))
    hi = win.max(axis=(2, 3))
    ok = (lo == hi) & (lo > 0)
    rows, cols = np.nonzero(ok)
    labels = lo[rows, cols]
    patches, inst_ids, boxes = [], [], []
    order = np.argsort(labels, kind="stable")
    rows, cols, labels = rows[order], cols[order], labels[order]
    bounds = np.flatnonzero(np.diff(labels)) + 1
    for grp in np.split(np.arange(labels.size), bounds):
        if grp.size == 0:
            continue
        grp = grp[rng.permutation(grp.size)]
        taken = []
        for g in grp:
            r, c = rows[g], cols[g]
            if all(abs(r - tr) >= P or abs(c - tc) >= P for tr, tc in taken):
                taken.append((r, c))
                if len(taken) == cfg.max_patches_per_cell:
                    break
        for r, c in taken:
            patches.append(rgb[r:r + P, c:c + P])
            inst_ids.append(labels[grp[0]])
            boxes.append((r, c, r + P, c + P))
    n = len(patches)
    if n == 0:
        return _empty_texture(P, 0)
    return (np.stack(patches).astype(np.uint8), np.full(n, src_idx, np.int32),
            np.asarray(inst_ids, np.int32), np.asarray(boxes, np.int32))


def _empty_texture(P, _):
    return (np.zeros((0, P, P, 3), np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32),
            np.zeros((0, 4), np.int32))


def assign_cohorts(patches: np.ndarray, n_cohorts: int) -> np.ndarray:
    """Split patches into ``n_cohorts`` near-equal cohorts by mean colour.

    The mean Lab colour of every patch is projected on the first principal axis of all patch
    means (oriented so that cohort 0 is the darkest); the sorted sequence is cut into
    ``n_cohorts`` consecutive groups whose sizes differ by at most one.

    Parameters
    ----------
    patches : ndarray of uint8, shape (N, P, P, 3)
    n_cohorts : int

    Returns
    -------
    ndarray of int8, shape (N,)
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[3] != 3 or patches.dtype != np.uint8:
        raise ValueError(f"patches must be uint8 of shape (N, P, P, 3), got "
                         f"{patches.dtype} {patches.shape}")
    n = patches.shape[0]
    if n < n_cohorts:
        raise ValueError(f"need at least {n_cohorts} patches to form {n_cohorts} cohorts, "
                         f"got {n}")
    means = _rgb_to_lab(patches.reshape(n, -1, 3)).mean(axis=1)  # (N, 3)
    centred = means - means.mean(axis=0)
    if np.allclose(centred, 0):
        axis = np.array([1.0, 0.0, 0.0])
    else:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axis = vt[0]
        if axis[0] < 0 or (axis[0] == 0 and axis.sum() < 0):
            axis = -axis
    score = centred @ axis
    order = np.argsort(score, kind="stable")
    cohort = np.empty(n, np.int8)
    for k, grp in enumerate(np.array_split(order, n_cohorts)):
        cohort[grp] = k
    return cohort


def _colour_stats(pixels: np.ndarray, rule: str, min_pixels: int) -> ColourStats:
    n = int(pixels.shape[0])
    if n < max(min_pixels, 2):
        return ColourStats(np.full(3, np.nan), np.full((3, 3), np.nan), n, rule)
    x = pixels.astype(np.float64) / 255.0
    return ColourStats(x.mean(axis=0), np.cov(x, rowvar=False), n, rule)


def _colour_masks(img: LabelledImage, lab: np.ndarray, inst_cls, cyto: np.ndarray, cfg) -> dict:
    nuc = img.instances > 0
    L = lab[..., 0]
    hue = np.degrees(np.arctan2(lab[..., 2], lab[..., 1]))
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    cls_px = inst_cls[img.instances]
    bg = ~nuc & (L >= cfg.background_min_lightness)
    vessel = (~nuc & ~bg & (hue >= cfg.vessel_hue[0]) & (hue < cfg.vessel_hue[1])
              & (chroma >= cfg.vessel_min_chroma))
    stroma = ~nuc & ~bg & ~vessel & (hue >= cfg.stroma_hue[0]) & (hue < cfg.stroma_hue[1])
    return {
        "background": bg,
        "stroma": stroma,
        "vessel": vessel,
        "tumour_nucleus": nuc & (cls_px == TUMOUR_CLASS),
        "immune_nucleus": nuc & (cls_px == IMMUNE_CLASS),
        "tumour_cytoplasm": cyto > 0,
    }


def _colour_rules(cfg) -> dict:
    return {
        "background": f"non-nucleus, L* >= {cfg.background_min_lightness:g}",
        "stroma": f"non-nucleus, not background/vessel, Lab hue in "
                  f"[{cfg.stroma_hue[0]:g}, {cfg.stroma_hue[1]:g}) deg",
        "vessel": f"non-nucleus, not background, Lab hue in [{cfg.vessel_hue[0]:g}, "
                  f"{cfg.vessel_hue[1]:g}) deg, chroma >= {cfg.vessel_min_chroma:g}",
        "tumour_nucleus": f"labelled class {TUMOUR_CLASS}",
        "immune_nucleus": f"labelled class {IMMUNE_CLASS}",
        "tumour_cytoplasm": f"non-nucleus within {cfg.cytoplasm_width:g} px of a tumour nucleus "
                            f"that is the nearest nucleus",
    }


def build_reference(paths, ref_image=None, patch_size: int | None = None, mpp: float = float("nan"),
                    config: ExtractionConfig | None = None, progress=None) -> ReferenceBundle:
    """Build a reference bundle from annotated H&E images.

    Parameters
    ----------
    paths : sequence of path-like
        Image files (``NAME.png`` with ``NAME_labels.npz`` beside) or folders of them.
    ref_image : path-like, optional
        Image whose Lab mean / std every input is Reinhard-normalised to; default the first
        input image.  Need not be labelled.
    patch_size : int, optional
        Overrides ``config.patch_size``.
    mpp : float
        Pixel size of the inputs in µm, recorded in the bundle (NaN = unknown).  All inputs
        must share it.
    config : ExtractionConfig, optional
    progress : callable, optional
        Called with a message per image.

    Returns
    -------
    ReferenceBundle

    Raises
    ------
    FileNotFoundError, ValueError
        Missing or malformed images / labels (the message names the file), or too few
        patches to form the cohorts.
    """
    cfg = config or ExtractionConfig()
    if patch_size is not None:
        cfg = dataclasses.replace(cfg, patch_size=patch_size)
    mpp = float(mpp)
    if not (np.isnan(mpp) or mpp > 0):
        raise ValueError(f"mpp must be positive (or NaN for unknown), got {mpp}")
    explicit = {Path(p) for p in paths if not Path(p).is_dir()}
    found = find_labelled_images(paths)
    # The same image twice (named again, or also inside a folder given) would double its
    # patches and colour pixels.
    check_distinct(found, "image")
    image_paths, skipped = [], []
    for p in found:
        if p not in explicit and not _usable(p):
            skipped.append(p)
            continue
        image_paths.append(p)
    if progress and skipped:
        progress(f"skipped {len(skipped)} image(s) without a class map or not RGB uint8: "
                 + ", ".join(q.name for q in skipped))
    if not image_paths:
        raise FileNotFoundError("no class-annotated RGB image among "
                                + ", ".join(str(p) for p in paths))
    ref_path = Path(ref_image) if ref_image is not None else image_paths[0]
    ref_rgb = _read_rgb(ref_path) if ref_image is not None else None
    if ref_rgb is None:
        ref_rgb = read_labelled_image(ref_path).rgb
    ref_mean, ref_std = (np.asarray(a, np.float64) for a in _lab_stats(ref_rgb))
    rng = np.random.default_rng(cfg.seed)

    nuc_patches, nuc_src, nuc_inst, nuc_bbox = [], [], [], []
    sets = {k: ([], [], [], []) for k in NUCLEUS_SETS}
    tex = {k: [] for k in TEXTURE_KINDS}
    colour_px = {k: [] for k in COLOUR_CLASSES}
    sources, hashes = [], []
    for si, p in enumerate(image_paths):
        img = read_labelled_image(p)
        if progress:
            progress(f"[{si + 1}/{len(image_paths)}] {p}")
        sources.append(str(p))
        hashes.append(_sha256(p))
        rgb = _normalise(img.rgb, ref_mean, ref_std)
        lab = _rgb_to_lab(rgb)
        inst_cls = _instance_classes(img.instances, img.classes)
        a, b, c, d = _nucleus_patches(img, rgb, inst_cls, cfg, si)
        nuc_patches.extend(a)
        nuc_src.append(b)
        nuc_inst.append(c)
        nuc_bbox.append(d)
        for kind, klass in NUCLEUS_SETS.items():
            for acc, part in zip(sets[kind], _nucleus_patches(img, rgb, inst_cls, cfg, si, klass,
                                                              cfg.min_lookalike_area)):
                if isinstance(part, list):
                    acc.extend(part)
                else:
                    acc.append(part)
        cyto = _tumour_cell_map(img.instances, inst_cls, cfg.cytoplasm_width)
        tex["tumour"].append(_square_patches(cyto, rgb, cfg, rng, si))
        immune = np.where(inst_cls[img.instances] == IMMUNE_CLASS, img.instances, 0)
        tex["immune"].append(_square_patches(immune.astype(np.int32), rgb, cfg, rng, si))
        for name, m in _colour_masks(img, lab, inst_cls, cyto, cfg).items():
            colour_px[name].append(rgb[m])

    if not nuc_patches:
        raise ValueError(f"no tumour nuclei (class {TUMOUR_CLASS}, not touching the border, "
                         f">= {cfg.min_nucleus_area} px) in {', '.join(sources)}")
    textures = {}
    for kind in TEXTURE_KINDS:
        parts = tex[kind]
        patches = np.concatenate([t[0] for t in parts])
        if patches.shape[0] < cfg.n_cohorts:
            raise ValueError(f"only {patches.shape[0]} {kind} texture patches of "
                             f"{cfg.patch_size}x{cfg.patch_size} px found in "
                             f"{', '.join(sources)}; need >= {cfg.n_cohorts} "
                             f"(smaller --patch-size?)")
        textures[kind] = TextureSet(patches, assign_cohorts(patches, cfg.n_cohorts),
                                    np.concatenate([t[1] for t in parts]),
                                    np.concatenate([t[2] for t in parts]),
                                    np.concatenate([t[3] for t in parts]))
    rules = _colour_rules(cfg)
    colours = {k: _colour_stats(np.concatenate(v), rules[k], cfg.min_colour_pixels)
               for k, v in colour_px.items()}
    return ReferenceBundle(
        nuclei=tuple(nuc_patches),
        nuclei_source=np.concatenate(nuc_src),
        nuclei_instance=np.concatenate(nuc_inst),
        nuclei_bbox=np.concatenate(nuc_bbox),
        textures=textures,
        colours=colours,
        sources=tuple(sources),
        source_sha256=tuple(hashes),
        ref_image=str(ref_path),
        ref_lab_mean=ref_mean,
        ref_lab_std=ref_std,
        mpp=mpp,
        config=cfg,
        nucleus_sets={k: NucleusSet(tuple(v[0]), np.concatenate(v[1]), np.concatenate(v[2]),
                                    np.concatenate(v[3]).reshape(-1, 4))
                      for k, v in sets.items()},
    )


def _usable(path: Path) -> bool:
    """True when ``path`` is RGB uint8 and its labels have a ``classes`` map (cheap checks)."""
    try:
        if "classes" not in labels_header(labels_path_for(path)):
            return False
        _read_rgb(path)
    except (OSError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------------------
# HDF5 storage


def save_reference(bundle: ReferenceBundle, path) -> Path:
    """Write ``bundle`` to ``path`` (HDF5) atomically.

    The file is written to a temporary name in the same folder and moved into place
    (:func:`vnumba.io.outputs.atomic_h5`), so an interrupted run never leaves a file that looks
    complete.

    Layout (attrs on ``/``: ``format``, ``version``, ``mpp``, ``ref_image``, ``ref_lab_mean``,
    ``ref_lab_std``, ``config`` (JSON)): ``sources``, ``source_sha256``;
    ``nuclei/{rgba (flat uint8), shape (M,2), offset (M,), source, instance, bbox}``;
    ``textures/<kind>/{patches (N,P,P,3), cohort, source, instance, bbox}``;
    ``colours/<name>`` (attrs ``mean``, ``cov``, ``n_pixels``, ``rule``).
    """
    import h5py

    from vnumba.io.outputs import atomic_h5

    path = Path(path)

    def write(f):
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["mpp"] = float(bundle.mpp)
        f.attrs["ref_image"] = bundle.ref_image
        f.attrs["ref_lab_mean"] = np.asarray(bundle.ref_lab_mean, np.float64)
        f.attrs["ref_lab_std"] = np.asarray(bundle.ref_lab_std, np.float64)
        f.attrs["config"] = json.dumps(dataclasses.asdict(bundle.config))
        str_dt = h5py.string_dtype()
        f.create_dataset("sources", data=np.array(bundle.sources, dtype=object), dtype=str_dt)
        f.create_dataset("source_sha256", data=np.array(bundle.source_sha256, dtype=object),
                         dtype=str_dt)
        _write_patch_group(f.create_group("nuclei"), NucleusSet(
            bundle.nuclei, bundle.nuclei_source, bundle.nuclei_instance, bundle.nuclei_bbox))
        for kind, ns in bundle.nucleus_sets.items():
            _write_patch_group(f.create_group(f"nuclei_{kind}"), ns)
        gt = f.create_group("textures")
        for kind, ts in bundle.textures.items():
            k = gt.create_group(kind)
            k.create_dataset("patches", data=ts.patches.astype(np.uint8))
            k.create_dataset("cohort", data=ts.cohort.astype(np.int8))
            k.create_dataset("source", data=ts.source.astype(np.int32))
            k.create_dataset("instance", data=ts.instance.astype(np.int32))
            k.create_dataset("bbox", data=ts.bbox.astype(np.int32))
        gc = f.create_group("colours")
        for name, cs in bundle.colours.items():
            c = gc.create_group(name)
            c.attrs["mean"] = np.asarray(cs.mean, np.float64)
            c.attrs["cov"] = np.asarray(cs.cov, np.float64)
            c.attrs["n_pixels"] = int(cs.n_pixels)
            c.attrs["rule"] = cs.rule

    atomic_h5(path, write)
    return path


def _write_patch_group(g, ns: NucleusSet) -> None:
    """Variable-size RGBA patches as one flat uint8 array with shapes and offsets."""
    shapes = np.array([p.shape[:2] for p in ns.patches], np.int32).reshape(-1, 2)
    sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1] * 4
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = (np.concatenate([p.ravel() for p in ns.patches]) if ns.patches
            else np.zeros(0, np.uint8))
    g.create_dataset("rgba", data=flat.astype(np.uint8))
    g.create_dataset("shape", data=shapes)
    g.create_dataset("offset", data=offsets)
    g.create_dataset("source", data=np.asarray(ns.source, np.int32))
    g.create_dataset("instance", data=np.asarray(ns.instance, np.int32))
    g.create_dataset("bbox", data=np.asarray(ns.bbox, np.int32).reshape(-1, 4))


def _read_patch_group(g, name: str) -> NucleusSet:
    flat = g["rgba"][()]
    shapes = g["shape"][()]
    offsets = g["offset"][()]
    patches = []
    for (h, w), o in zip(shapes, offsets):
        n = int(h) * int(w) * 4
        if o < 0 or o + n > flat.size:
            raise ValueError(f"{name} patch extends beyond the pixel data")
        patches.append(flat[o:o + n].reshape(int(h), int(w), 4))
    src, inst, bbox = g["source"][()], g["instance"][()], g["bbox"][()]
    if not (len(src) == len(inst) == len(bbox) == len(patches)):
        raise ValueError(f"{name} provenance arrays and patches differ in length")
    return NucleusSet(tuple(patches), src, inst, bbox)


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def load_reference(path) -> ReferenceBundle:
    """Read a bundle written by :func:`save_reference`.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not HDF5, not a reference bundle (foreign ``format``), of an
        unsupported version, or lacks / has inconsistent datasets (truncated or malformed);
        the message names the file.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference bundle not found (build one with "
                                f"'python -m synth reference IMAGES -o {path.name}')")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with f:
        fmt = _attr_str(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise ValueError(f"{path}: not a synth reference bundle (format attribute "
                             f"{fmt!r}, expected {FORMAT!r})")
        version = int(f.attrs.get("version", -1))
        if version not in _READABLE_VERSIONS:
            raise ValueError(f"{path}: reference bundle version {version} is not supported "
                             f"(this code reads versions {_READABLE_VERSIONS}); rebuild it")
        try:
            cfg_dict = json.loads(_attr_str(f.attrs["config"]))
            known = {fl.name for fl in dataclasses.fields(ExtractionConfig)}
            unknown = sorted(set(cfg_dict) - known)
            if unknown:
                raise ValueError(f"unknown config key(s) {unknown}")
            cfg = ExtractionConfig(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in cfg_dict.items()})
            sources = tuple(_attr_str(s) for s in f["sources"][()])
            hashes = tuple(_attr_str(s) for s in f["source_sha256"][()])
            tum = _read_patch_group(f["nuclei"], "nucleus")
            nuclei, nsrc, ninst, nbbox = tum.patches, tum.source, tum.instance, tum.bbox
            nsets = {k: (_read_patch_group(f[f"nuclei_{k}"], f"nuclei_{k}") if version >= 2
                         else NucleusSet.empty()) for k in NUCLEUS_SETS}
            textures = {}
            for kind in TEXTURE_KINDS:
                k = f["textures"][kind]
                ts = TextureSet(k["patches"][()], k["cohort"][()], k["source"][()],
                                k["instance"][()], k["bbox"][()])
                P = cfg.patch_size
                if ts.patches.ndim != 4 or ts.patches.shape[1:] != (P, P, 3):
                    raise ValueError(f"textures/{kind}/patches has shape {ts.patches.shape}, "
                                     f"expected (N, {P}, {P}, 3)")
                if not (len(ts.cohort) == len(ts.source) == len(ts.instance) == len(ts.bbox)
                        == len(ts)):
                    raise ValueError(f"textures/{kind} arrays differ in length")
                if len(ts) and (ts.cohort.min() < 0 or ts.cohort.max() >= cfg.n_cohorts):
                    raise ValueError(f"textures/{kind}/cohort outside 0..{cfg.n_cohorts - 1}")
                textures[kind] = ts
            colours = {}
            for name in COLOUR_CLASSES:
                c = f["colours"][name]
                colours[name] = ColourStats(np.asarray(c.attrs["mean"], np.float64).reshape(3),
                                            np.asarray(c.attrs["cov"], np.float64).reshape(3, 3),
                                            int(c.attrs["n_pixels"]), _attr_str(c.attrs["rule"]))
            bundle = ReferenceBundle(
                nuclei=tuple(nuclei), nuclei_source=nsrc, nuclei_instance=ninst,
                nuclei_bbox=nbbox, textures=textures, colours=colours, sources=sources,
                source_sha256=hashes, ref_image=_attr_str(f.attrs["ref_image"]),
                ref_lab_mean=np.asarray(f.attrs["ref_lab_mean"], np.float64),
                ref_lab_std=np.asarray(f.attrs["ref_lab_std"], np.float64),
                mpp=float(f.attrs["mpp"]), config=cfg, nucleus_sets=nsets)
        except KeyError as exc:
            raise ValueError(f"{path}: malformed reference bundle, missing {exc}") from exc
        except (ValueError, TypeError, OSError) as exc:
            raise ValueError(f"{path}: malformed reference bundle ({exc})") from exc
    return bundle
