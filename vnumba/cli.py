"""Command-line helpers shared by the entry points (app layer): argument types that name the
option in their one-line error, and the object-extraction options of predict and evaluate."""
from __future__ import annotations

import argparse

import numpy as np

from vnumba.io.images import MPP_RANGE


def _number(s) -> float:
    """``float(s)``; a string that is not a number is refused naming it."""
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None


def _integer(s) -> int:
    """``int(s)``; a string that is not an integer is refused naming it."""
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None


def _positive_float(s):
    v = _number(s)
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def interruptible(main):
    """Wrap a command's ``main`` so that Ctrl-C prints one line and exits 130 instead of a
    traceback (every file the command writes is written atomically, so an interrupted run
    leaves finished outputs complete and nothing half-written)."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("interrupted; the outputs finished before it are complete, nothing half-written "
                  "was left", file=sys.stderr)
            return 130

    return wrapped


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE (see
    --help)``, exit status 2) instead of the usage block followed by the message: every
    command of the project reports a bad option on one line naming it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _pixel_size(s):
    v = _number(s)
    if not (np.isfinite(v) and MPP_RANGE[0] <= v <= MPP_RANGE[1]):
        raise argparse.ArgumentTypeError(f"a pixel size in um/px must lie in "
                                         f"[{MPP_RANGE[0]:g}, {MPP_RANGE[1]:g}], got {s}")
    return v


def _non_negative(s):
    v = _number(s)
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def _count(s):
    v = _integer(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _positive_int(s):
    v = _integer(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def _int_in(lo: int, hi: int):
    """Argument type: an integer in ``[lo, hi]`` (its help should state the bounds)."""
    def parse(s):
        v = _integer(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must lie in [{lo}, {hi}], got {s}")
        return v
    parse.__name__ = f"int_in_{lo}_{hi}"
    return parse


def _unit_float(s):
    v = _number(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {s}")
    return v


def add_extraction_options(p) -> None:
    """``--split-um``, ``--min-area-um2`` and their pixel overrides ``--split-h``, ``--min-area``
    (one definition for predict and evaluate)."""
    from vnumba.analysis.objects import MIN_AREA_UM2, SPLIT_UM
    p.add_argument("--split-um", type=_non_negative, default=SPLIT_UM,
                   help=f"watershed split depth for touching objects in um ({SPLIT_UM})")
    p.add_argument("--min-area-um2", type=_non_negative, default=MIN_AREA_UM2,
                   help=f"drop objects smaller than this many um^2 ({MIN_AREA_UM2})")
    p.add_argument("--split-h", type=_non_negative, default=None,
                   help="split depth in pixels of the image (overrides --split-um)")
    p.add_argument("--min-area", type=_count, default=None,
                   help="minimum object area in pixels of the image (overrides --min-area-um2)")
