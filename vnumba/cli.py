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


def positive_float(s):
    v = _number(s)
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


#: The environment variables the project reads, with what each accepts (checked by
#: :func:`check_environment` before a command does anything; docs/architecture.md).
ENVIRONMENT = {
    "VNUMBA_SIMD_BITS": "128, 256 or 512 (the kernels' vector width; unset: the widest the CPU has)",
    "VNUMBA_KEEP_MEMORY": "0 or 1 (1, the default: freed memory is kept for reuse)",
    "NUMBA_NUM_THREADS": "a whole number from 1 to 1024 (threads of the compiled kernels)",
    "NUMBA_CACHE_DIR": "a folder where compiled kernels are cached (made if missing)",
}


def environment_problem(environ=None) -> str | None:
    """The first of :data:`ENVIRONMENT` set to a value it does not accept, as one line naming
    the variable and its value (None when all are fine or unset)."""
    import os

    env = os.environ if environ is None else environ
    for name, accepted in ENVIRONMENT.items():
        v = env.get(name)
        if v is None or not v.strip():
            continue
        t = v.strip()
        ok = {"VNUMBA_SIMD_BITS": lambda: t in ("128", "256", "512"),
              "VNUMBA_KEEP_MEMORY": lambda: t in ("0", "1"),
              "NUMBA_NUM_THREADS": lambda: t.isdigit() and 1 <= int(t) <= 1024,
              "NUMBA_CACHE_DIR": lambda: not os.path.exists(t) or os.path.isdir(t)}[name]()
        if not ok:
            return f"environment variable {name}={v!r}: expected {accepted}"
    return None


def check_environment() -> None:
    """Exit with one line (status 2) when an environment variable the project reads holds a
    value it does not accept (:func:`environment_problem`)."""
    import sys

    msg = environment_problem()
    if msg:
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (:func:`terminate_as_interrupt`): a ``kill``, a
    batch system's time limit or ``docker stop`` unwinds like Ctrl-C, so every ``except
    KeyboardInterrupt`` and every atomic writer's cleanup runs."""


_SIGTERM = {"raised": False}


def _on_sigterm(signum, frame):
    if _SIGTERM["raised"]:
        return  # already unwinding: let the cleanup (temporaries, locks) finish
    f = frame
    while f is not None:
        if f.f_code.co_name == "__del__":
            # An exception raised inside a finalizer is printed and swallowed ("Exception
            # ignored in ... __del__"), and the run would go on: deliver the signal again in a
            # moment, when the finalizer has returned.
            import os
            import threading
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        f = f.f_back
    _SIGTERM["raised"] = True
    _quiet_finalizers()
    raise Terminated()


def _quiet_finalizers() -> None:
    """Once a run is being stopped, say nothing about finalizers that fail.

    The signal may arrive inside a library object's ``__init__`` (seen: imageio's Pillow
    plugin), whose ``__del__`` then fails on the half-built object as the stack unwinds and
    Python prints "Exception ignored in ..." with a traceback after the one line. The run ends
    anyway and its cleanup does not rely on those finalizers, so their failures are dropped.
    """
    import sys

    sys.unraisablehook = lambda unraisable: None


def terminate_as_interrupt() -> None:
    """Handle SIGTERM like Ctrl-C from now on (only possible in the main thread; elsewhere,
    e.g. a command called from a worker thread, the handling is left as it is).

    A signal arriving while a compiled kernel runs is handled when it returns.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """Exit status of a run stopped by ``exc``: 143 (128 + SIGTERM) or 130 (128 + SIGINT)."""
    return 143 if isinstance(exc, Terminated) else 130


def interrupted_word(exc: KeyboardInterrupt) -> str:
    """``"terminated (SIGTERM)"`` or ``"interrupted"``: the first word of the one line."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def interruptible(main):
    """Wrap a command's ``main`` so that Ctrl-C and SIGTERM print one line and exit 130 / 143
    instead of a traceback (every file the command writes is written atomically, so an
    interrupted run leaves finished outputs complete and nothing half-written)."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapped(argv=None):
        check_environment()
        terminate_as_interrupt()
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            _quiet_finalizers()
            print(f"{interrupted_word(e)}; the outputs finished before it are complete, nothing "
                  f"half-written was left", file=sys.stderr)
            return interrupted_status(e)

    return wrapped


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE (see
    --help)``, exit status 2) instead of the usage block followed by the message: every
    command of the project reports a bad option on one line naming it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def pixel_size(s):
    v = _number(s)
    if not (np.isfinite(v) and MPP_RANGE[0] <= v <= MPP_RANGE[1]):
        raise argparse.ArgumentTypeError(f"a pixel size in um/px must lie in "
                                         f"[{MPP_RANGE[0]:g}, {MPP_RANGE[1]:g}], got {s}")
    return v


def non_negative(s):
    v = _number(s)
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def non_negative_int(s):
    v = _integer(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def positive_int(s):
    v = _integer(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def int_in(lo: int, hi: int):
    """Argument type: an integer in ``[lo, hi]`` (its help should state the bounds)."""
    def parse(s):
        v = _integer(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must lie in [{lo}, {hi}], got {s}")
        return v
    parse.__name__ = f"int_in_{lo}_{hi}"
    return parse


def unit_float(s):
    v = _number(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {s}")
    return v


def add_extraction_options(p) -> None:
    """``--split-um``, ``--min-area-um2`` and their pixel overrides ``--split-h``, ``--min-area``
    (one definition for predict and evaluate)."""
    from vnumba.analysis.objects import MIN_AREA_UM2, SPLIT_UM
    p.add_argument("--split-um", type=non_negative, default=SPLIT_UM,
                   help=f"watershed split depth for touching objects in um ({SPLIT_UM})")
    p.add_argument("--min-area-um2", type=non_negative, default=MIN_AREA_UM2,
                   help=f"drop objects smaller than this many um^2 ({MIN_AREA_UM2})")
    p.add_argument("--split-h", type=non_negative, default=None,
                   help="split depth in pixels of the image (overrides --split-um)")
    p.add_argument("--min-area", type=non_negative_int, default=None,
                   help="minimum object area in pixels of the image (overrides --min-area-um2)")

