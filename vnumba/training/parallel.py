"""Data-parallel training through the executor seam (``vnumba.train --scheduler``).

Every iteration, each image of the batch is a task: the worker reads its crop **from the
dataset's path** itself (the driver sends parameters, never images), computes the image's loss
and exact gradient with the current parameters, normalised by the whole batch size
(:func:`vnumba.vn.model.loss_and_grad` with ``batch_size``), and returns them with the
image's monitoring figures.  The driver sums the gradients in the images' order, starting from
zero, then runs Adam and the projections and checkpoints as in-process training does.

Why one task per image: in-process training already accumulates the batch gradient image by
image in that order (``chunk=1``), so the sum is the same floating-point sum and the trained
model is bit-identical to in-process training (tested in float64 and float32,
``tests/test_distributed.py``), whatever the number of workers.  The cost: per iteration the
parameters go out once (they are one task's result that every worker fetches once) and one
gradient per image comes back — for the default network 232 490 parameters, 0.93 MB in float32
per image (docs/distributed.md).

A worker lost during an iteration: Dask reruns its tasks elsewhere (the image and the
parameters are the same), so the iteration completes with the same result; the run does not
fail.  A dataset path the workers cannot read is one error naming it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["batch_on_executor"]

#: Datasets a worker has opened, by absolute path (opened once per worker, kept open).
_OPEN: dict = {}


def _dataset(path):
    from vnumba.io.dataset import SyntheticDataset

    ds = _OPEN.get(path)
    if ds is None:
        ds = _OPEN[path] = SyntheticDataset(path)
    return ds


def _image_task(shared, item):
    """Loss, gradient and monitoring figures of one image of the batch (runs on a worker)."""
    from vnumba.vn.model import loss_and_grad

    path, cfg, params, dtype, batch, mask_weights = shared
    i, y, x, size = item
    u0, gu, gm = (np.ascontiguousarray(a[None], dtype=dtype)
                  for a in _dataset(path).read(i, y, x, size))
    loss, grads, u_T, m_T = loss_and_grad(params, cfg, u0, gu, gm, batch_size=batch,
                                          mask_weights=mask_weights)
    correct = int(np.count_nonzero((m_T > 0.5) == (gm > 0.5)))
    mse = float(np.mean((u_T.astype(np.float64) - gu) ** 2, axis=(1, 2, 3))[0])
    return loss, grads, correct, int(m_T.size), mse


def batch_on_executor(executor, data_path, cfg, params, plan, dtype, mask_weights=None):
    """The batch's loss, summed gradient and monitoring figures, computed on ``executor``.

    Parameters
    ----------
    executor : vnumba.executor.Executor
    data_path : path
        The dataset, as every worker can open it (made absolute here).
    cfg : ModelConfig
    params : dict of ndarray
        Current parameters (not modified).
    plan : tuple
        :func:`vnumba.io.dataset.batch_plan` ``(indices, ys, xs, size)``.
    dtype : numpy dtype
    mask_weights : tuple of float, optional
        Class weights of the loss's mask term (default: the article's loss).

    Returns
    -------
    loss : float
    grads : dict of ndarray
        Summed in the images' order from zero: the in-process batch gradient, bit for bit.
    metrics : dict
        ``accuracy`` and ``psnr`` as :func:`vnumba.vn.model.batch_metrics` gives them.
    """
    idx, ys, xs, size = plan
    items = [(int(i), int(y), int(x), size) for i, y, x in zip(idx, ys, xs)]
    shared = (str(Path(data_path).resolve()), cfg, {k: np.array(v) for k, v in params.items()},
              np.dtype(dtype), len(items), mask_weights)
    loss = 0.0
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    correct = total = 0
    mses = []
    for l_i, g_i, c_i, n_i, mse_i in executor.map(_image_task, items, shared=shared):
        loss += l_i
        for k in grads:
            grads[k] += g_i[k]
        correct += c_i
        total += n_i
        mses.append(mse_i)
    mse = np.asarray(mses)
    psnr = float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))))
    return float(loss), grads, {"accuracy": correct / total, "psnr": psnr}
