"""The synthetic training dataset contract — the one definition, shared by :mod:`synth`
(which writes the files, :mod:`synth.writer`) and training (which reads them).

An HDF5 file (``schema_version`` :data:`SCHEMA_VERSION`) holding the datasets
:data:`DATASETS`:

==========  ==================  =======  =============================================
dataset     shape               dtype    content
==========  ==================  =======  =============================================
``u0``      (N, C, H, W)        float32  noisy input image, values in [0, 1]
``gu``      (N, C, H, W)        float32  clean target image, values in [0, 1]
``gm``      (N, H, W) or        float32  target mask, values in [0, 1]: one channel, or
            (N, C_m, H, W)               one per nucleus class (``mask_classes``)
==========  ==================  =======  =============================================

* N, H, W >= 1; each dataset is stored in the file (a hard link, not an external or soft
  link to another file's data) and chunked one sample per chunk, so
  :meth:`SyntheticDataset.read` touches only the chunk(s) of the sample it reads (and of a
  crop only the rows it needs); the whole dataset is never loaded.
* **Channels: C >= 1, any number**, the same for ``u0`` and ``gu``.  Writers store what the
  scenario renders — every shipped scenario renders three channels (scenario 1: three-colour
  fluorescence; scenarios 2 and 3: RGB H&E), so :mod:`synth` files have C = 3 — but the
  contract does not fix C: the networks take their channel count from the data
  (``n_channels``) and prediction matches an image's channels to the model's, so a grey or
  two-stain dataset built with :func:`write_dataset_arrays` is as valid.  Writer and reader
  check the same rule (:func:`validate_file`), so neither accepts a file the other refuses.
* dtype: written as :data:`DTYPE` (float32); any floating-point dtype is accepted on reading
  and converted to float32.
* values (:data:`VALUE_RANGE`): finite and within [0, 1] in all three datasets; checked per
  sample (:func:`check_sample`) by the writer before storing a sample and by the reader when
  it reads one.
* **Mask channels**: ``gm`` of shape (N, H, W) is the article's single mask; (N, C_m, H, W)
  holds one map per nucleus class, named in order by the root attribute ``mask_classes``
  (a JSON list of ``C_m`` distinct non-empty strings, e.g. ``["tumour", "immune", "other"]``),
  which such a file must carry (:data:`MASK_CLASSES_ATTR`, :func:`mask_classes`).
* root attributes: :data:`REQUIRED_ATTRS` (``schema_version``, an integer equal to
  :data:`SCHEMA_VERSION`); :data:`STRING_ATTRS` (``scenario``, ``name``, ``script``,
  ``mask_classes``) are strings where present.  :mod:`synth` also records ``seed``, ``generator_version``,
  ``mpp``, ``n`` and ``size`` (H, W).

Every violation raises :class:`DatasetError` with a message that names the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

__all__ = ["SCHEMA_VERSION", "DATASETS", "IMAGE_DATASETS", "REQUIRED_ATTRS", "STRING_ATTRS",
           "DTYPE", "VALUE_RANGE", "MIN_CHANNELS", "MASK_CLASSES_ATTR", "DatasetError",
           "mask_classes", "open_dataset_file",
           "validate_file", "check_sample", "create_datasets", "SyntheticDataset", "batch_plan",
           "write_dataset_arrays"]

#: Version of the layout below, stored as the root attribute ``schema_version``.
SCHEMA_VERSION = 1
#: The datasets every file holds: noisy input, clean target, target mask.
DATASETS = ("u0", "gu", "gm")
#: The image datasets, shape (N, C, H, W); ``gm`` is (N, H, W) or (N, C_m, H, W).
IMAGE_DATASETS = ("u0", "gu")
#: Root attribute naming the classes of a multi-channel ``gm`` (JSON list of strings).
MASK_CLASSES_ATTR = "mask_classes"
#: Root attributes every file carries.
REQUIRED_ATTRS = ("schema_version",)
#: Root attributes that must be strings where present.
STRING_ATTRS = ("scenario", "name", "script", MASK_CLASSES_ATTR)
#: The dtype writers store (readers accept any floating-point dtype and convert).
DTYPE = np.dtype(np.float32)
#: Closed interval every stored value lies in.
VALUE_RANGE = (0.0, 1.0)
#: The channel rule: C >= MIN_CHANNELS, no upper bound (see the module docstring).
MIN_CHANNELS = 1


#: Largest sample (pixels per image, 4096²) a dataset may declare: a sample is read whole
#: the first time it is drawn (to check every value), and HDF5 decompresses a whole chunk to
#: read any part of it, so a 30 kB file declaring 100000² px must be refused before reading.
MAX_SAMPLE_PIXELS = 2 ** 24
#: Largest chunk (bytes, decompressed) any dataset may have, for the same reason.
MAX_CHUNK_BYTES = 2 ** 30


class DatasetError(ValueError):
    """A dataset file that does not follow the contract (message names the file)."""


def open_dataset_file(path, mode="r"):
    """Open ``path`` with h5py, turning "not HDF5" into :class:`DatasetError`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    DatasetError
        It exists but cannot be read as HDF5 (truncated or foreign file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not an HDF5 dataset file")
    try:
        return h5py.File(path, mode)
    except (OSError, ValueError) as e:
        msg = " ".join(str(e).split())  # h5py's messages span lines
        raise DatasetError(f"{path}: not a readable HDF5 file (truncated or foreign file): "
                           f"{msg}") from None


def validate_file(f, where) -> tuple:
    """Check an open HDF5 file against the contract (all but the per-sample values).

    Used by the writer (:mod:`synth.writer`, on the complete temporary file, before it is
    moved into place; :func:`write_dataset_arrays`) and by the reader
    (:class:`SyntheticDataset`, ``synth.writer.dataset_info``).

    Parameters
    ----------
    f : h5py.File
    where : str or Path
        Names the file in error messages.

    Returns
    -------
    tuple of int
        ``(N, C, H, W)``.

    Raises
    ------
    DatasetError
    """
    p = where
    for k in DATASETS:
        if k not in f:
            raise DatasetError(f"{p}: dataset {k!r} missing; expected {', '.join(DATASETS)} "
                               f"(not a synth dataset? see README)")
    for k in DATASETS:
        # A link would read another file's data in place of this one's.
        link = f.get(k, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise DatasetError(f"{p}: '{k}' is a {type(link).__name__}, not a dataset stored "
                               f"in the file")
        if not isinstance(f[k], h5py.Dataset):
            raise DatasetError(f"{p}: '{k}' is a {type(f[k]).__name__}, expected a dataset")
        # Self-contained files only: a virtual dataset whose source file is missing reads as
        # zeros (and would be trained on); external raw storage reads other files' bytes.
        if f[k].is_virtual:
            raise DatasetError(f"{p}: dataset '{k}' is a virtual dataset (its data lies in other "
                               f"files); write a self-contained file (h5repack or synth generate)")
        if f[k].external:
            raise DatasetError(f"{p}: dataset '{k}' has external raw storage "
                               f"({f[k].external[0][0]!s}); write a self-contained file")
    for k in STRING_ATTRS:
        v = f.attrs.get(k)
        if v is not None and not isinstance(v, (str, bytes)):
            raise DatasetError(f"{p}: attribute '{k}' must be a string, got {type(v).__name__}")
    for k in REQUIRED_ATTRS:
        if k not in f.attrs:
            raise DatasetError(f"{p}: root attribute {k!r} missing")
    ver = f.attrs.get("schema_version")
    if (isinstance(ver, (bool, np.bool_)) or not isinstance(ver, (int, np.integer))
            or int(ver) != SCHEMA_VERSION):
        raise DatasetError(f"{p}: schema_version {ver!r}, expected {SCHEMA_VERSION}")
    u0, gu, gm = (f[k] for k in DATASETS)
    if (u0.ndim != 4 or gu.shape != u0.shape or gm.ndim not in (3, 4)
            or gm.shape[0] != u0.shape[0] or gm.shape[-2:] != u0.shape[2:]):
        raise DatasetError(f"{p}: inconsistent shapes u0 {u0.shape}, gu {gu.shape}, "
                           f"gm {gm.shape}; expected (N, C, H, W), (N, C, H, W), (N, H, W) "
                           f"or (N, C_m, H, W)")
    mask_classes(f, p)
    for k in DATASETS:
        if f[k].dtype.kind != "f":
            raise DatasetError(f"{p}: dataset {k} has dtype {f[k].dtype}, expected floating "
                               f"point ({DTYPE})")
    n, c, h, w = (int(s) for s in u0.shape)
    if h * w > MAX_SAMPLE_PIXELS:
        raise DatasetError(f"{p}: samples of {w}x{h} px are beyond the {MAX_SAMPLE_PIXELS} pixels "
                           f"a sample may have (training reads a sample whole; synthesize "
                           f"smaller images)")
    for k in DATASETS:
        chunk = f[k].chunks
        if chunk is not None:
            nbytes = int(np.prod(chunk, dtype=np.float64)) * f[k].dtype.itemsize
            if nbytes > MAX_CHUNK_BYTES:
                raise DatasetError(f"{p}: dataset '{k}' has chunks {chunk} of {nbytes / 2**30:.1f} "
                                   f"GiB, beyond the {MAX_CHUNK_BYTES / 2**30:g} GiB reading one "
                                   f"may cost (expected one chunk per sample)")
    if n == 0:
        raise DatasetError(f"{p}: dataset holds no samples")
    if c < MIN_CHANNELS:
        raise DatasetError(f"{p}: u0 and gu have {c} channels, expected at least {MIN_CHANNELS}")
    if h == 0 or w == 0:
        raise DatasetError(f"{p}: images are {h}x{w} pixels, expected at least 1x1")
    return n, c, h, w


def mask_classes(f, where) -> tuple:
    """The class names of the mask channels of an open dataset file.

    Returns
    -------
    tuple of str
        ``()`` for the one-channel (N, H, W) mask; the ``C_m`` names of ``mask_classes``
        for an (N, C_m, H, W) one.

    Raises
    ------
    DatasetError
        A multi-channel mask without a valid ``mask_classes`` (a JSON list of ``C_m``
        distinct non-empty strings), or that attribute beside a one-channel mask.
    """
    gm = f["gm"]
    raw = f.attrs.get(MASK_CLASSES_ATTR)
    if gm.ndim == 3:
        if raw is not None:
            raise DatasetError(f"{where}: attribute '{MASK_CLASSES_ATTR}' given but gm has "
                               f"one channel (N, H, W)")
        return ()
    cm = int(gm.shape[1])
    if raw is None:
        raise DatasetError(f"{where}: gm has {cm} class channels but no '{MASK_CLASSES_ATTR}' "
                           f"attribute naming them")
    try:
        names = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ValueError, RecursionError):
        names = None
    if (not isinstance(names, list) or len(names) != cm
            or not all(isinstance(n, str) and n.strip() for n in names)
            or len(set(names)) != cm):
        raise DatasetError(f"{where}: attribute '{MASK_CLASSES_ATTR}' must be a JSON list of "
                           f"{cm} distinct class names (gm has {cm} channels), got {str(raw)[:80]!r}")
    return tuple(names)


def check_sample(where, i, u0, gu, gm, shape=None) -> None:
    """Check one sample's arrays: shapes (``shape`` = (C, H, W) if given, else consistent
    with each other and C >= 1; ``gm`` (H, W) or (C_m, H, W)), finite values within
    :data:`VALUE_RANGE`.

    Raises
    ------
    DatasetError
        Naming the file (``where``), the sample and the dataset.
    """
    u0, gu, gm = (np.asarray(a) for a in (u0, gu, gm))
    if shape is None:
        shape = u0.shape
    shape = tuple(int(s) for s in shape)
    if (len(shape) != 3 or shape[0] < MIN_CHANNELS or u0.shape != shape or gu.shape != shape
            or gm.ndim not in (2, 3) or gm.shape[-2:] != shape[1:] or 0 in gm.shape):
        raise DatasetError(f"{where}: sample {i} has shapes u0 {u0.shape}, gu {gu.shape}, "
                           f"gm {gm.shape}; expected (C, H, W) = {shape} with C >= "
                           f"{MIN_CHANNELS} and gm (H, W) or (C_m, H, W)")
    lo, hi = VALUE_RANGE
    for name, a in zip(DATASETS, (u0, gu, gm)):
        if a.dtype.kind != "f":
            raise DatasetError(f"{where}: sample {i} of {name} has dtype {a.dtype}, expected "
                               f"floating point")
        if not np.all(np.isfinite(a)):
            raise DatasetError(f"{where}: sample {i} of {name} contains NaN or inf")
        if a.size and (a.min() < lo or a.max() > hi):
            raise DatasetError(f"{where}: sample {i} of {name} has values outside [{lo:g}, {hi:g}]")


def create_datasets(f, where, shapes, *, data=None, compression=None, shuffle=(), **attrs) -> tuple:
    """Create the datasets and root attributes of the contract in an open, empty HDF5 file and
    check the result with :func:`validate_file`: the one way a dataset file is made
    (:func:`write_dataset_arrays`, ``synth.writer.write_dataset``).

    Parameters
    ----------
    f : h5py.File
        Open for writing (the atomic writer's temporary file).
    where : str or Path
        Names the file in error messages.
    shapes : sequence of 3 tuples
        Shapes of ``u0``, ``gu`` and ``gm``; each dataset is stored as :data:`DTYPE`, one
        chunk per sample.
    data : sequence of 3 arrays, optional
        Their contents (default: created empty, to be filled sample by sample).
    compression : str, optional
        h5py filter of all three datasets (``"lzf"``).
    shuffle : tuple of str
        The datasets that get the byte-shuffle filter.
    **attrs
        Root attributes besides ``schema_version`` (``scenario``, ``seed``, ``mpp``, ...);
        ``mask_classes`` may be a list of names (stored as JSON).

    Returns
    -------
    tuple of h5py.Dataset
        ``u0``, ``gu``, ``gm``.

    Raises
    ------
    DatasetError
        The shapes or attributes break :func:`validate_file`.
    """
    out = []
    for k, shape, a in zip(DATASETS, shapes, data or (None,) * len(DATASETS)):
        shape = tuple(int(s) for s in shape)
        one_sample = (1,) + shape[1:] if shape and 0 not in shape else None
        out.append(f.create_dataset(k, shape, DTYPE, data=a, chunks=one_sample,
                                    compression=compression, shuffle=k in shuffle))
    names = attrs.pop(MASK_CLASSES_ATTR, None)
    if names is not None:
        f.attrs[MASK_CLASSES_ATTR] = json.dumps(list(names)) if isinstance(names, (list, tuple)) else names
    f.attrs["schema_version"] = SCHEMA_VERSION
    for k, v in attrs.items():
        f.attrs[k] = v
    validate_file(f, where)
    return tuple(out)


def content_hash(f) -> str:
    """BLAKE2b of the stored bytes of ``u0``, ``gu`` and ``gm`` of an open file: what makes
    two files the same data, beyond their attributes (``--resume`` compares it).

    Chunked datasets are hashed chunk by chunk on their raw (compressed) bytes with each
    chunk's offset and filter mask, without decompressing; contiguous ones by row slabs of
    their values.  Both read each stored byte once, with memory bounded by one chunk.
    """
    import hashlib

    h = hashlib.blake2b(digest_size=20)
    for k in DATASETS:
        d = f[k]
        h.update(f"{k}{d.shape}{d.dtype.str}{d.chunks}{d.compression}".encode())
        if d.chunks is not None:
            for i in range(d.id.get_num_chunks()):
                info = d.id.get_chunk_info(i)
                mask, raw = d.id.read_direct_chunk(info.chunk_offset)
                h.update(repr((info.chunk_offset, mask)).encode())
                h.update(raw)
        else:
            for i in range(int(d.shape[0])):
                h.update(np.ascontiguousarray(d[i]).tobytes())
    return h.hexdigest()


class SyntheticDataset:
    """Open a training dataset for reading by index.

    Parameters
    ----------
    path : str or path-like

    Raises
    ------
    FileNotFoundError, DatasetError
    """

    def __init__(self, path):
        self.path = Path(path)
        self._f = open_dataset_file(self.path)
        try:
            self.n, self.channels, self.height, self.width = validate_file(self._f, self.path)
            #: Class names of the mask channels; () for the one-channel mask.
            self.mask_classes = mask_classes(self._f, self.path)
            #: Mask channels C_m (1 for the one-channel (N, H, W) mask).
            self.mask_channels = max(1, len(self.mask_classes))
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v)
                          for k, v in self._f.attrs.items()}
            # Samples whose whole arrays passed check_sample (a crop alone could miss a
            # NaN or an out-of-range pixel elsewhere in the sample).
            self._checked = set()
        except Exception:
            self._f.close()
            raise

    def __len__(self):
        return self.n

    def content_hash(self) -> str:
        """:func:`content_hash` of this file's arrays."""
        return content_hash(self._f)

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, i, y=0, x=0, size=None):
        """Read sample ``i`` (optionally the square crop at row ``y``, column ``x``).

        Returns
        -------
        u0, gu : ndarray, shape (C, h, w), float32
        gm : ndarray, shape (h, w), or (C_m, h, w) for a multi-class mask, float32
        """
        if not 0 <= i < self.n:
            raise IndexError(f"{self.path}: sample {i} out of range [0, {self.n})")
        if size is None:
            ys, xs = slice(0, self.height), slice(0, self.width)
        else:
            if y < 0 or x < 0 or y + size > self.height or x + size > self.width:
                raise ValueError(f"crop {size} at ({y}, {x}) outside {self.height}x{self.width}")
            ys, xs = slice(y, y + size), slice(x, x + size)
        if i not in self._checked:
            # First read of this sample: validate all of it (one chunk per dataset), so a bad
            # value anywhere stops the run the first time the sample is drawn.
            full = self._read(i, slice(0, self.height), slice(0, self.width))
            check_sample(self.path, i, *full)
            self._checked.add(i)
            if size is None:
                return full
        u0, gu, gm = self._read(i, ys, xs)
        check_sample(self.path, i, u0, gu, gm)
        return u0, gu, gm

    def _read(self, i, ys, xs):
        try:
            u0 = np.asarray(self._f["u0"][i, :, ys, xs], dtype=np.float32)
            gu = np.asarray(self._f["gu"][i, :, ys, xs], dtype=np.float32)
            gm = np.asarray(self._f["gm"][(i, Ellipsis, ys, xs)], dtype=np.float32)
        except OSError as e:
            raise DatasetError(f"{self.path}: sample {i} cannot be read (truncated file?): {e}") from None
        return u0, gu, gm

    def batch(self, plan, dtype=np.float32):
        """Read a batch described by :func:`batch_plan` rows ``(index, y, x)`` with crop ``size``.

        Returns
        -------
        u0, gu : ndarray, shape (B, C, s, s)
        gm : ndarray, shape (B, s, s), or (B, C_m, s, s) for a multi-class mask
        """
        idx, ys, xs, size = plan
        out = [self.read(int(i), int(y), int(x), size) for i, y, x in zip(idx, ys, xs)]
        return tuple(np.ascontiguousarray(np.stack([o[k] for o in out]), dtype=dtype) for k in range(3))


def batch_plan(seed: int, iteration: int, n: int, batch: int, height: int, width: int, crop=None):
    """Which samples and crops iteration ``iteration`` uses.

    Derived from ``SeedSequence(seed, spawn_key=(1, iteration))`` alone, so a resumed run
    draws exactly the batches an uninterrupted one would.

    Returns
    -------
    tuple
        ``(indices (B,), y (B,), x (B,), size)``; ``size`` is None for full images.
    """
    for name, v, lo in (("seed", seed, 0), ("iteration", iteration, 0), ("n", n, 1),
                        ("batch", batch, 1), ("height", height, 1), ("width", width, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"batch_plan: {name} must be an integer >= {lo}, got {v!r}")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, np.integer))
                             or crop < 1):
        raise ValueError(f"batch_plan: crop must be None or an integer >= 1, got {crop!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, iteration)))
    idx = rng.choice(n, size=batch, replace=batch > n)
    if crop is None or (crop >= height and crop >= width):
        z = np.zeros(batch, dtype=np.int64)
        return idx, z, z, None
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} larger than the images ({height}x{width})")
    ys = rng.integers(0, height - crop + 1, size=batch)
    xs = rng.integers(0, width - crop + 1, size=batch)
    return idx, ys, xs, int(crop)


def write_dataset_arrays(path, u0, gu, gm, *, check_values: bool = True, **attrs):
    """Write arrays in the dataset contract (one chunk per sample), atomically.

    Used by tests and tools that build small datasets directly; :mod:`synth` writes its
    files (:func:`synth.writer.write_dataset`) with the same layout and the same checks.

    Parameters
    ----------
    path : path-like
    u0, gu : array_like, shape (N, C, H, W), values in [0, 1]
    gm : array_like, shape (N, H, W), or (N, C_m, H, W) with ``mask_classes`` given,
        values in [0, 1]
    check_values : bool
        Check every sample with :func:`check_sample` (finite, in range) before writing;
        ``False`` only for tests that need a file with a bad sample (the reader refuses it).
    **attrs
        Root attributes (``scenario``, ``seed``, ``mpp``, ...); ``mask_classes`` may be a
        list of names (stored as JSON).

    Raises
    ------
    DatasetError
        The arrays break the file rules of :func:`validate_file` or, with ``check_values``,
        a sample breaks :func:`check_sample` (nothing is written).
    """
    from vnumba.io.outputs import atomic_h5
    u0 = np.asarray(u0, DTYPE)
    gu = np.asarray(gu, DTYPE)
    gm = np.asarray(gm, DTYPE)

    def write(f):
        create_datasets(f, path, [a.shape for a in (u0, gu, gm)], data=(u0, gu, gm), **attrs)
        if check_values:  # after the file rules, whose messages name the broken rule
            for i in range(u0.shape[0]):
                check_sample(path, i, u0[i], gu[i], gm[i])

    atomic_h5(path, write)
