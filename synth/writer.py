"""Writing the HDF5 datasets of synthetic samples (the training data contract).

The contract — ``schema_version``, the datasets ``u0`` / ``gu`` / ``gm``, their shapes, dtype
and value range, the channel rule and the required attributes — is defined once, in
:mod:`vnumba.io.dataset`; this module imports it (:data:`SCHEMA_VERSION`,
:class:`DatasetError`), creates its files with :func:`vnumba.io.dataset.create_datasets`
(which checks them with the function the training reader uses,
:func:`vnumba.io.dataset.validate_file`), and checks every sample with
:func:`vnumba.io.dataset.check_sample`.  The files synth writes have C = :data:`CHANNELS` = 3
(every scenario renders three channels: three-colour fluorescence for scenario 1, RGB H&E
for scenarios 2 and 3); the contract itself allows any C >= 1.

Each dataset is chunked one sample per chunk (lzf-compressed) so readers open sample ``i``
without touching the others.  Root attributes: ``schema_version``, ``scenario`` (kind),
``name``, ``script`` (full TOML text), ``seed``, ``generator_version``, ``mpp``, ``n``,
``size`` (H, W).

Sample ``i`` is generated with ``default_rng(SeedSequence(seed).spawn(n)[i])``
(:func:`synth.generator.sample_rng`), so a file depends on (script, seed, n) only, not on
the number of worker processes.  Files are written with the project's one atomic writer
(:func:`vnumba.io.outputs.atomic_h5`: a temporary file in the target directory, renamed into
place when complete), so an interrupted run never leaves a file under the requested name.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vnumba.executor import Executor, get_executor
from vnumba.io.dataset import (
    SCHEMA_VERSION,
    DatasetError,
    check_sample,
    create_datasets,
    open_dataset_file,
    validate_file,
)
from vnumba.io.outputs import atomic_h5, check_h5_write

from . import GENERATOR_VERSION
from .generator import generate_sample, sample_rng
from .script import Script, load_script

__all__ = ["SCHEMA_VERSION", "CHANNELS", "write_dataset", "read_sample", "dataset_info",
           "DatasetError"]

#: Channels of every synth image (the generator's samples are (3, H, W), Sample.validate).
CHANNELS = 3


def _make(shared, i: int):
    """Task of the executor (vnumba.executor): sample ``i``, from its own seed alone."""
    script, reference, seed = shared
    s = generate_sample(script, sample_rng(seed, i), reference)
    return i, s.noisy, s.clean, s.mask


class _Progress:
    def __init__(self, n, enabled, label):
        self.n, self.enabled, self.label = n, enabled, label
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, done):
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.n and now - self.last < 0.5:
            return
        self.last = now
        el = now - self.t0
        rate = done / el if el > 0 else 0.0
        eta = (self.n - done) / rate if rate > 0 else float("inf")
        w = 30
        fill = int(w * done / max(1, self.n))
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (w - fill)}] {done}/{self.n} "
                         f"{rate:.1f} img/s ETA {eta:.0f} s   ")
        if done >= self.n:
            sys.stderr.write("\n")
        sys.stderr.flush()


def write_dataset(path, script, n: int, seed: int, workers: int = 1, reference: Any = None,
                  progress: bool = True, executor: Executor | None = None) -> Path:
    """Generate ``n`` samples of ``script`` and write them atomically to ``path``.

    Parameters
    ----------
    path : str or Path
        Output ``.h5`` file (replaced if it exists, only once the new file is complete).
    script : Script, str or Path
        A parsed script, a path, or a shipped name.
    n : int
        Number of samples (>= 1).
    seed : int
        Dataset seed (>= 0).
    workers : int
        Worker processes (1 = generate in this process).  The output does not depend on it.
    reference : object, optional
        Passed to the generator (scenario 3's reference bundle); must be picklable when
        the samples are made elsewhere (``workers > 1`` or an ``executor``).
    progress : bool
        Print a progress bar on stderr.
    executor : vnumba.executor.Executor, optional
        Where the samples are made (``--scheduler``: a Dask cluster); overrides ``workers``.
        Only this process writes the file, in the samples' order, so its datasets are the
        same bytes whatever runs the samples.

    Returns
    -------
    Path
        The written file.
    """
    if not isinstance(script, Script):
        script = load_script(script)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    n, seed, workers = int(n), int(seed), int(workers)
    own = executor is None
    if own:
        executor = get_executor(f"processes:{workers}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory {path.parent} does not exist")
    H, W = script.size
    C = CHANNELS
    # Before any sample is drawn: a dataset that cannot fit on the disk is refused (lzf
    # rarely compresses these images by more than 3x; a 4x allowance only stops absurd -n).
    raw = n * (2 * C + max(1, len(script.mask_classes))) * H * W * 4
    free = shutil.disk_usage(path.parent).free
    if raw / 4 > free:
        raise ValueError(f"n = {n} samples of {H}x{W} px need about {raw / 2**30:.3g} GiB "
                         f"uncompressed; {path.parent} has {free / 2**30:.3g} GiB free")
    bar = _Progress(n, progress, f"{script.name} -> {path.name}")

    def write(f):
        # lzf is fast enough for the writing process to keep up with the workers; the
        # byte shuffle only pays off for the noisy image (measured: the flat-coloured
        # target and the mask compress better and faster without it)
        classes = script.mask_classes
        mshape = (len(classes), H, W) if classes else (H, W)
        extra = {"mask_classes": list(classes)} if classes else {}
        # the reader's own check (validate_file) runs here, before any sample is made
        u0, gu, gm = create_datasets(
            f, path, [(n, C, H, W), (n, C, H, W), (n,) + mshape], compression="lzf",
            shuffle=("u0",), scenario=script.scenario, name=script.name, script=script.text,
            seed=seed, generator_version=GENERATOR_VERSION, mpp=float(script.mpp), n=n,
            size=np.array([H, W], dtype=np.int64), **extra)

        def put(i, noisy, clean, mask):
            check_sample(path, i, noisy, clean, mask, shape=(C, H, W))
            u0[i] = noisy
            gu[i] = clean
            gm[i] = mask
            f.flush()  # the sample leaves HDF5's chunk cache, so that a full disk shows now
            check_h5_write(f)  # and stops the run here, not after every sample

        # several samples per task on a cluster: a sample takes 20-300 ms, a task ~50 ms
        chunk = max(1, min(8, n // (4 * executor.workers)))
        results = executor.map(_make, range(n), shared=(script, reference, seed), chunk=chunk)
        for done, res in enumerate(results, 1):
            put(*res)  # in order, whatever order the workers finish in
            bar.update(done)

    try:
        atomic_h5(path, write)
    finally:
        if own:
            executor.close()
    return path


def dataset_info(path) -> dict:
    """Root attributes and sizes of a dataset.

    Checked with the reader's rules (:func:`vnumba.io.dataset.validate_file`).

    Raises
    ------
    FileNotFoundError
    DatasetError
        The file is not HDF5 or breaks the contract.
    """
    path = Path(path)
    with open_dataset_file(path) as f:
        n, c, h, w = validate_file(f, path)
        info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    info.update(n_samples=n, channels=c, height=h, width=w)
    return info


def read_sample(path, i: int):
    """Read sample ``i`` (opening only its chunks).

    Returns
    -------
    u0, gu : ndarray (C, H, W) float32
    gm : ndarray (H, W) float32
    """
    info = dataset_info(path)
    if not 0 <= i < info["n_samples"]:
        raise IndexError(f"{path}: sample {i} out of range 0..{info['n_samples'] - 1}")
    with h5py.File(path, "r") as f:
        return f["u0"][i], f["gu"][i], f["gm"][i]
