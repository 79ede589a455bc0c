"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

A forward step allocates and frees a dozen arrays of ~9 MB per image.  glibc's malloc serves
such blocks with ``mmap`` or returns the top of its heap to the OS when they are freed, so
the next step's arrays start on fresh pages: ~11 800 page faults per 300×300 forward pass,
at ~2.4 µs each on this VM about 4 % of the pass (``bench/README.md``).  Raising glibc's mmap
and trim thresholds keeps freed blocks in the heap for reuse: no faults after the first
step.  The cost is that the process keeps its peak heap (up to ``trim_threshold`` above it)
until it exits — right for a training or prediction run, not something a library should do
to its host process unasked.  The command-line entry points (``vnumba.train``,
``vnumba.predict``, ``vnumba.evaluate``) and the benchmarks call :func:`keep_freed_memory`;
library users may call it themselves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_state = {"applied": None}


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc to keep blocks up to ``mmap_threshold`` bytes and up to ``trim_threshold``
    bytes of free heap in the process.

    Parameters
    ----------
    mmap_threshold : int
        Blocks at least this large are still served by ``mmap`` (default 32 MiB: one
        image's feature arrays are 9 MB; a batch's would not be kept).
    trim_threshold : int
        Free memory at the top of the heap beyond this is returned to the OS (default 1 GiB).

    Returns
    -------
    bool
        True if the thresholds are in force; False where they are not: not Linux with glibc,
        ``VNUMBA_KEEP_MEMORY=0`` in the environment, or glibc's own ``MALLOC_MMAP_THRESHOLD_``
        / ``MALLOC_TRIM_THRESHOLD_`` set by the user (their choice is left alone).

    Notes
    -----
    Calling it again is harmless; the first call's outcome is returned.
    """
    if _state["applied"] is not None:
        return _state["applied"]
    ok = False
    keep = os.environ.get("VNUMBA_KEEP_MEMORY", "1").strip() or "1"
    if keep not in ("0", "1"):  # the commands check it first (vnumba.cli.check_environment)
        raise ValueError(f"VNUMBA_KEEP_MEMORY={keep!r}: expected 0 or 1")
    if (sys.platform.startswith("linux") and keep != "0"
            and "MALLOC_MMAP_THRESHOLD_" not in os.environ
            and "MALLOC_TRIM_THRESHOLD_" not in os.environ):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            ok = (mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
                  and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1)
    _state["applied"] = ok
    return ok
