"""Reading the synthetic training datasets (the contract shared with :mod:`synth`).

An HDF5 file with

* ``u0`` (N, C, H, W) float32 — noisy input image, values in [0, 1]
* ``gu`` (N, C, H, W) float32 — clean target image
* ``gm`` (N, H, W) float32 — target mask
* attrs ``schema_version`` (1), ``scenario``, ``seed``, ``script`` (scenario script text), …

Each sample is one chunk, so :meth:`SyntheticDataset.read` touches only the chunk(s) of the
sample it reads (and of a crop only the rows it needs); the whole dataset is never loaded.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

__all__ = ["SCHEMA_VERSION", "SyntheticDataset", "DatasetError", "batch_plan", "write_dataset_arrays"]

SCHEMA_VERSION = 1


class DatasetError(ValueError):
    """A dataset file that does not follow the contract (message names the file)."""


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
        if not self.path.exists():
            raise FileNotFoundError(f"dataset not found: {self.path}")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise DatasetError(f"{self.path}: cannot be read as HDF5 (truncated or foreign file): {e}") from None
        try:
            self._validate()
        except Exception:
            self._f.close()
            raise

    def _validate(self):
        f, p = self._f, self.path
        missing = [k for k in ("u0", "gu", "gm") if k not in f]
        if missing:
            raise DatasetError(f"{p}: missing dataset(s) {missing}; expected u0, gu, gm (see README)")
        for k in ("u0", "gu", "gm"):
            # A link would read another file's data in place of this one's.
            link = f.get(k, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise DatasetError(f"{p}: '{k}' is a {type(link).__name__}, not a dataset stored "
                                   f"in the file")
            if not isinstance(f[k], h5py.Dataset):
                raise DatasetError(f"{p}: '{k}' is a {type(f[k]).__name__}, expected a dataset")
        for k in ("scenario", "name"):
            v = f.attrs.get(k)
            if v is not None and not isinstance(v, (str, bytes)):
                raise DatasetError(f"{p}: attribute '{k}' must be a string, got {type(v).__name__}")
        ver = f.attrs.get("schema_version")
        if ver is None or int(ver) != SCHEMA_VERSION:
            raise DatasetError(f"{p}: schema_version {ver!r}, expected {SCHEMA_VERSION}")
        u0, gu, gm = f["u0"], f["gu"], f["gm"]
        if u0.ndim != 4 or gu.shape != u0.shape or gm.shape != (u0.shape[0],) + u0.shape[2:]:
            raise DatasetError(f"{p}: inconsistent shapes u0 {u0.shape}, gu {gu.shape}, gm {gm.shape}")
        for name, d in (("u0", u0), ("gu", gu), ("gm", gm)):
            if d.dtype.kind != "f":
                raise DatasetError(f"{p}: dataset {name} has dtype {d.dtype}, expected floating point")
        if u0.shape[0] == 0:
            raise DatasetError(f"{p}: dataset holds no samples")
        self.n, self.channels, self.height, self.width = (int(s) for s in u0.shape)
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}

    def __len__(self):
        return self.n

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
        gm : ndarray, shape (h, w), float32
        """
        if not 0 <= i < self.n:
            raise IndexError(f"{self.path}: sample {i} out of range [0, {self.n})")
        if size is None:
            ys, xs = slice(0, self.height), slice(0, self.width)
        else:
            if y < 0 or x < 0 or y + size > self.height or x + size > self.width:
                raise ValueError(f"crop {size} at ({y}, {x}) outside {self.height}x{self.width}")
            ys, xs = slice(y, y + size), slice(x, x + size)
        try:
            u0 = np.asarray(self._f["u0"][i, :, ys, xs], dtype=np.float32)
            gu = np.asarray(self._f["gu"][i, :, ys, xs], dtype=np.float32)
            gm = np.asarray(self._f["gm"][i, ys, xs], dtype=np.float32)
        except OSError as e:
            raise DatasetError(f"{self.path}: sample {i} cannot be read (truncated file?): {e}") from None
        for name, a in (("u0", u0), ("gu", gu), ("gm", gm)):
            if not np.all(np.isfinite(a)):
                raise DatasetError(f"{self.path}: sample {i} of {name} contains NaN or inf")
            if a.min() < 0.0 or a.max() > 1.0:
                raise DatasetError(f"{self.path}: sample {i} of {name} has values outside [0, 1]")
        return u0, gu, gm

    def batch(self, plan, dtype=np.float32):
        """Read a batch described by :func:`batch_plan` rows ``(index, y, x)`` with crop ``size``.

        Returns
        -------
        u0, gu : ndarray, shape (B, C, s, s)
        gm : ndarray, shape (B, s, s)
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


def write_dataset_arrays(path, u0, gu, gm, **attrs):
    """Write arrays in the dataset contract (one chunk per sample), atomically.

    Used by tests and tools that build small datasets directly; :mod:`synth` writes its
    own files with the same layout.
    """
    from vnumba.io.models import atomic_h5
    u0 = np.asarray(u0, np.float32)
    gu = np.asarray(gu, np.float32)
    gm = np.asarray(gm, np.float32)

    def write(f):
        f.create_dataset("u0", data=u0, chunks=(1,) + u0.shape[1:])
        f.create_dataset("gu", data=gu, chunks=(1,) + gu.shape[1:])
        f.create_dataset("gm", data=gm, chunks=(1,) + gm.shape[1:])
        f.attrs["schema_version"] = SCHEMA_VERSION
        for k, v in attrs.items():
            f.attrs[k] = v

    atomic_h5(path, write)
