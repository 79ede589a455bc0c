"""Annotation files: ``NAME_labels.npz`` beside ``NAME.png`` (the one reader of them).

An annotation holds ``instances`` (integer, 0 = background, one id per nucleus) and, where
available, ``classes`` (integer class code per pixel, < 256).  It is read by ``evaluate``,
``synth reference`` and ``synth stats`` — files that users bring from other tools, so every
property is checked before it costs memory:

* the file must be a zip archive (``.npz``) whose arrays are plain ``.npy`` members: no pickled
  objects, header read first, so the declared shape and dtype are checked (against the image's
  shape and :data:`MAX_LABEL_PIXELS`) before any array is read;
* integer dtypes, no negative ids, classes < 256;
* instance ids may be any non-negative integers (other tools number nuclei across a whole slide:
  ids near 2^40 occur): ids larger than the number of pixels are renumbered 1..n keeping every
  nucleus distinct (order kept), so that nothing downstream sizes an array by the largest id.

Every error is a :class:`LabelsError` (a ``ValueError``) whose one-line message names the file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

__all__ = ["LabelsError", "UnreadableLabels", "renumber_ids", "MAX_LABEL_PIXELS", "read_labels", "labels_header"]

#: Largest annotation (pixels) read: as large as the largest image whole-image prediction reads
#: (:data:`vnumba.io.images.MAX_IMAGE_PIXELS`).
MAX_LABEL_PIXELS = 2 ** 26


class LabelsError(ValueError):
    """An annotation file that cannot be used (message names the file)."""


class UnreadableLabels(LabelsError):
    """Not a readable ``.npz`` at all (truncated, foreign bytes): a folder's other annotations
    may still be used, while a readable file with wrong content is refused."""


def labels_header(path) -> dict:
    """The keys of a labels ``.npz`` and each array's declared (shape, dtype), without reading
    any array.

    Raises
    ------
    LabelsError
        Not a zip archive, a member that is not a ``.npy`` array, or an object (pickled) dtype.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnreadableLabels(f"{path}: not a readable .npz labels file (not a zip archive)")
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                out[info.filename[:-4]] = (tuple(int(s) for s in shape), np.dtype(dtype))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        raise UnreadableLabels(f"{path}: not a readable .npz labels file ({type(e).__name__}: {msg})") \
            from None
    return out


def _check_header(path, key, shape, dtype, expect_shape):
    if dtype.hasobject or dtype.kind not in "iu":
        raise LabelsError(f"{path}: '{key}' must be an integer array, got dtype {dtype}")
    if len(shape) != 2:
        raise LabelsError(f"{path}: '{key}' must be 2-D, got shape {shape}")
    if expect_shape is not None and shape != tuple(expect_shape):
        raise LabelsError(f"{path}: '{key}' has shape {shape}, the image has {tuple(expect_shape)}")
    if shape[0] * shape[1] > MAX_LABEL_PIXELS:
        raise LabelsError(f"{path}: '{key}' is {shape[1]}x{shape[0]} px, beyond the limit of "
                          f"{MAX_LABEL_PIXELS} pixels an annotation may have")


def renumber_ids(instances: np.ndarray) -> np.ndarray:
    """``instances`` as int32 with ids 1..n in the order of the original ids when any id exceeds
    the number of pixels (or int32); unchanged values otherwise.  0 stays background."""
    a = np.asarray(instances)
    top = int(a.max(initial=0))
    if top <= min(a.size, np.iinfo(np.int32).max):
        return np.ascontiguousarray(a, dtype=np.int32)
    ids, inv = np.unique(a, return_inverse=True)
    inv = inv.reshape(a.shape).astype(np.int32)
    if ids[0] != 0:  # no background pixel: every id moves up by one
        inv += 1
    return inv


def read_labels(path, shape=None, require_classes: bool = False):
    """Read and validate an annotation file.

    Parameters
    ----------
    path : str or Path
        ``NAME_labels.npz`` with ``instances`` and optionally ``classes``.
    shape : tuple of int, optional
        (H, W) of the image the annotation belongs to; checked before reading.
    require_classes : bool
        Refuse a file without ``classes``.

    Returns
    -------
    instances : ndarray, shape (H, W), int32
        0 = background; ids renumbered 1..n only where they exceed the pixel count.
    classes : ndarray, shape (H, W), uint8, or None

    Raises
    ------
    LabelsError
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found")
    head = labels_header(path)
    if "instances" not in head or (require_classes and "classes" not in head):
        need = ["instances", "classes"] if require_classes else ["instances"]
        missing = [k for k in need if k not in head]
        raise LabelsError(f"{path}: malformed labels file, missing key(s) {missing} "
                          f"(has {sorted(head)})")
    for key in ("instances", "classes"):
        if key in head:
            _check_header(path, key, *head[key], shape if shape is not None else head["instances"][0])
    try:
        with np.load(path, allow_pickle=False) as z:
            inst = np.asarray(z["instances"])
            cls = np.asarray(z["classes"]) if "classes" in head else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        msg = " ".join(str(e).split())
        raise UnreadableLabels(f"{path}: not a readable .npz labels file ({type(e).__name__}: {msg})") \
            from None
    if inst.size and inst.min() < 0:
        raise LabelsError(f"{path}: 'instances' has negative values")
    if cls is not None:
        if cls.size and cls.min() < 0:
            raise LabelsError(f"{path}: 'classes' has negative values")
        if cls.max(initial=0) > 255:
            raise LabelsError(f"{path}: 'classes' values must be < 256")
        cls = np.ascontiguousarray(cls, dtype=np.uint8)
    return renumber_ids(inst), cls
