"""The training log: a CSV file with one row per iteration, written by
:mod:`vnumba.training.trainer` and read back for resuming and for the training curves
(:func:`vnumba.analysis.plots.read_training_log`).

Columns, in order (:data:`LOG_COLUMNS`): ``iter`` (1-based), ``loss``, ``accuracy`` (mask
accuracy at threshold 1/2), ``psnr`` (dB, of ``u_T``), ``seconds`` (elapsed training time),
``lr`` (the step size of that iteration).
"""
from __future__ import annotations

import csv
from pathlib import Path

from vnumba.io.outputs import atomic_write

__all__ = ["LOG_COLUMNS", "CURVE_COLUMNS", "write_log", "read_log_rows"]

LOG_COLUMNS = ("iter", "loss", "accuracy", "psnr", "seconds", "lr")

#: The columns a training curve needs; logs of older versions lack ``lr``.
CURVE_COLUMNS = LOG_COLUMNS[:4]


def write_log(path, rows) -> None:
    """Write the header and ``rows`` (lists of strings, :data:`LOG_COLUMNS` in order) to
    ``path``, atomically."""
    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(LOG_COLUMNS)
            w.writerows(rows)
    atomic_write(path, write)


def read_log_rows(path, upto: int) -> list:
    """The rows (lists of strings) of iterations ``<= upto``; no file: none."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        r = csv.reader(fh)
        next(r, None)
        return [row for row in r if row and int(row[0]) <= upto]
